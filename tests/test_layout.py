"""The shape of the code: no import cycles, no private third-party internals, one declaration per option,
and the few places that still lean on a dependency's behaviour fail loudly when it changes."""

from __future__ import annotations

import ast
import importlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import TINY

PACKAGE = Path(__file__).resolve().parents[1] / "featx"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(target module, imported names, line) for every import in a file, function-level ones included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, names, _ in _imports(path):
            if not target.startswith("featx"):
                continue
            for n in names or [None]:  # `from . import x` imports the submodule x
                full = f"{target}.{n}" if n and f"{target}.{n}" in modules else target
                if full in modules and full != mod:
                    graph[mod].add(full)
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


#: featx's families from the bottom up (docs/architecture.md draws the same picture). A module imports featx
#: modules of its own family or of a lower layer only; two families of one layer never import each other.
LAYERS = (
    ("errors", "version"),
    ("util", "options", "compat"),
    ("data",),
    ("backbones", "cache"),
    ("heads", "extract", "report"),
    ("probe", "pipeline"),
    ("transfer", "adapt", "audit", "inference", "finetune"),
    ("cli",),
    ("__main__", "featx"),
)


def _family(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "featx"


def test_families_depend_downwards_only():
    layer = {family: i for i, families in enumerate(LAYERS) for family in families}
    graph = _graph()
    unplaced = sorted({_family(m) for m in graph} - set(layer))
    assert not unplaced, f"new package(s) {unplaced}: give them a layer in LAYERS and in docs/architecture.md"
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
              if _family(m) != _family(t) and layer[_family(t)] >= layer[_family(m)]]
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_no_module_is_too_long():
    """One job per module: none over 450 lines (split it by what it does)."""
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, long


def test_no_private_third_party_imports():
    found = []
    for path in PACKAGE.rglob("*.py"):
        for target, names, line in _imports(path):
            if not target or target.startswith("featx"):
                continue
            private = [p for p in target.split(".")[1:] if p.startswith("_")] + [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target} {names}")
    assert not found, "private internals of a dependency:\n" + "\n".join(found)


def test_library_modules_do_not_print_or_use_click():
    """Only featx/cli talks to the terminal; the library logs to the 'featx' logger."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.name}:{node.lineno} print()")
        for target, _, line in _imports(path):
            if target.split(".")[0] == "click":
                offenders.append(f"{path.name}:{line} imports click")
    assert not offenders, offenders


def test_import_featx_prints_nothing(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import featx, featx.extract, featx.heads.registry, featx.pipeline"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stderr


def test_a_bad_head_parameter_is_refused_without_loading_torch(tmp_path):
    """Checking a head's parameters needs scikit-learn's constraints only: torch (2 s to import here) loads when a
    head is fitted, so `featx fit --param C=-1` answers before it (0.9 s instead of 2.4 s on this machine)."""
    import subprocess
    import sys

    code = ("import sys\nfrom featx import FeatxUsageError\nfrom featx.heads.registry import make_head\n"
            "try:\n    make_head('svm', {'C': -1})\nexcept FeatxUsageError as e:\n    print(e)\n"
            "make_head('torch-linear', {'lr': 0.1})\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["head svm: C must be a float in the range (0.0, inf), got -1", "False"]


# -- one declaration per choice --------------------------------------------------------------------------


def test_a_registered_precision_and_decoder_show_everywhere(image_folder, tmp_path, monkeypatch):
    """One entry in featx.options makes a precision / decoder appear in --help, the pipeline loader and
    the cache record -- nothing else to edit."""
    from featx.cache.store import open_features
    from featx.cli import main
    from featx.options import DECODERS, PRECISIONS, Decoder, Precision
    from featx.pipeline import load_pipeline

    monkeypatch.setitem(PRECISIONS, "fp32-again", Precision("fp32-again", None, "fp32 under another name (test)"))
    monkeypatch.setitem(DECODERS, "pil-again", Decoder("pil-again", None, "PIL under another name (test)"))

    help_text = CliRunner().invoke(main, ["extract", "--help"]).output
    assert "fp32-again" in help_text and "pil-again" in help_text

    p = tmp_path / "p.toml"
    p.write_text('[extract]\nprecision = "fp32-again"\ndecoder = "pil-again"\n')
    exp = load_pipeline(p)
    assert (exp.extract.precision, exp.extract.decoder) == ("fp32-again", "pil-again")

    out = tmp_path / "c.h5"
    result = CliRunner().invoke(main, ["extract", "--data", str(image_folder), "--backbone", TINY, "--weights", "none",
                                       "--precision", "fp32-again", "--decoder", "pil-again", "--out", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    meta = open_features(out).meta
    assert (meta["precision"], meta["decoder"]) == ("fp32-again", "pil-again")
    plain = CliRunner().invoke(main, ["extract", "--data", str(image_folder), "--backbone", TINY, "--weights", "none",
                                      "--out", str(tmp_path / "plain.h5"), "--no-progress"])
    assert plain.exit_code == 0
    a, b = open_features(out)["train"].X, open_features(tmp_path / "plain.h5")["train"].X
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # same computation, recorded under its own name
    assert open_features(out).cache_key != open_features(tmp_path / "plain.h5").cache_key


def test_pipeline_overrides_are_validated_like_the_file():
    from featx import FeatxUsageError
    from featx.pipeline import Experiment

    exp = Experiment().override(precision="bf16", batch_size=8, name="resnet18")
    assert (exp.extract.precision, exp.extract.batch_size, exp.backbone.name) == ("bf16", 8, "resnet18")
    with pytest.raises(FeatxUsageError, match="--batch-size: expected a positive number of images, got 0"):
        Experiment().override(batch_size=0)
    with pytest.raises(FeatxUsageError, match="--precision: unknown precision 'fp8'"):
        Experiment().override(precision="fp8")


# -- where featx still depends on a dependency's behaviour, the test says so loudly -----------------------


def test_non_public_names_featx_reads_still_exist():
    """featx.compat holds every read of a dependency's non-public names; each one is checked here against the
    installed versions, so an upstream move fails this test instead of a user's run."""
    import inspect

    from sklearn.neighbors import KNeighborsClassifier
    from torchvision import datasets
    from torchvision.models import MobileNet_V2_Weights

    from featx import compat

    # scikit-learn's parameter constraints, checked without data
    compat.sklearn_check_params(KNeighborsClassifier(n_neighbors=3))
    with pytest.raises(ValueError, match="n_neighbors"):
        compat.sklearn_check_params(KNeighborsClassifier(n_neighbors=-1))
    # torchvision's weights metadata
    assert compat.imagenet_top1(MobileNet_V2_Weights.IMAGENET1K_V1) == pytest.approx(71.878)
    # torchvision datasets that keep their labels privately still do (read off their source: no download)
    assert "self._labels" in inspect.getsource(datasets.Flowers102.__init__)
    assert "self._samples" in inspect.getsource(datasets.StanfordCars.__init__)
    # skada's adapters: the names skops records are the classes' own, reached through skada's public names
    import skada

    names = compat.skada_trusted_types()
    assert len(names) == len(compat.SKADA_ADAPTERS)
    for name, public in zip(names, compat.SKADA_ADAPTERS):
        module, _, cls = name.rpartition(".")
        assert cls == public and getattr(importlib.import_module(module), cls) is getattr(skada, public)


def test_preset_equals_the_weights_own_transform():
    """featx.data.decoding.Preset (public torchvision.transforms.functional calls) must equal the preset
    object torchvision's weights return, on PIL images and on uint8 tensors."""
    from torchvision.models import EfficientNet_B0_Weights, MobileNet_V2_Weights

    from featx.data.decoding import Preset

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 417, 3), dtype=np.uint8))
    for weights in (MobileNet_V2_Weights.IMAGENET1K_V1, EfficientNet_B0_Weights.IMAGENET1K_V1):
        theirs = weights.transforms()
        ours = Preset(crop_size=theirs.crop_size[0], resize_size=theirs.resize_size[0], mean=theirs.mean,
                      std=theirs.std, interpolation=theirs.interpolation, antialias=theirs.antialias)
        assert torch.equal(ours(img), theirs(img))
        tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
        assert torch.equal(ours(tensor), theirs(tensor))


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo this-must-not-run",))


def test_weights_only_loads_refuse_code_even_when_asked_for_a_full_unpickle(tmp_path):
    """torchvision's builders load through torch.hub with weights_only=False; featx forces
    weights_only=True around them with torch's documented switch. A file that would run code is refused."""
    from featx.backbones.loading import weights_only_loads

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Boom()}, path)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before, "the switch is restored afterwards"


def test_embedding_sizes_of_models_the_meta_device_cannot_build():
    """RegNets are built with their init skipped through torch's public TorchFunctionMode; the size read off
    equals a normally built model's, and torch.nn.init works as before afterwards."""
    from torchvision.models import get_model

    from featx.backbones.torchvision_models import embedding_dim

    assert embedding_dim("regnet_x_400mf") == get_model("regnet_x_400mf", weights=None).fc.in_features == 400
    t = torch.zeros(3)
    torch.nn.init.ones_(t)
    assert t.sum() == 3
