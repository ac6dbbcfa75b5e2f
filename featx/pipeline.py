"""Named experiments: ``pipelines/<name>.toml`` -> an :class:`Experiment`.

A pipeline file has these tables (every key optional; defaults shown)::

    [source]
    data = "torchvision:FashionMNIST"   # or a folder, a .csv manifest, a Stanford Dogs root
    root = "cache/datasets"             # where torchvision datasets are stored
    download = false                    # let torchvision download the dataset (online)
    val_fraction = 0.1                  # stratified validation split carved from train
    test_fraction = 0.1                 # only for folders without a test split
    seed = 0
    limit = 0                           # first N items of each split only (0 = all)

    [backbone]
    name = "mobilenet_v2"
    weights = "IMAGENET1K_V1"           # torchvision weights enum member, DEFAULT, none, or a .pth file
    layer = "features.14"               # optional: an intermediate node, global-average-pooled

    [extract]
    batch_size = 16
    workers = -1                        # DataLoader workers; -1 = automatic
    device = "cpu"                      # cpu, cuda, cuda:1, ...
    precision = "fp32"                  # fp32 (default, exact), bf16, fp16
    channels_last = true
    decoder = "pil"                     # pil (default) or torchvision (faster JPEG/PNG/WebP decode, recorded)
    compile = false                     # torch.compile the backbone (~30 s first; faster forward; recorded)

    [cache]
    dir = "cache"

    [heads.svm]                         # parameter overrides per head
    C = 0.01

    [grid.logreg]                       # search grids per head (featx grid), replacing the defaults
    C = [0.001, 0.01, 0.1]

Unknown tables, keys, and values of the wrong type are refused with one clear line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import FeatxError

__all__ = ["Experiment", "load_pipeline", "SECTIONS"]


@dataclass
class Experiment:
    name: str = "adhoc"
    # [source]
    data: str = "torchvision:FashionMNIST"
    root: str = "cache/datasets"
    download: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    limit: int = 0
    # [backbone]
    backbone: str = "mobilenet_v2"
    weights: str | None = "IMAGENET1K_V1"  # the embedded default; None = the model's DEFAULT weights
    layer: str | None = None
    # [extract]
    batch_size: int = 16
    workers: int = -1
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = True
    decoder: str = "pil"
    compile: bool = False
    # [cache]
    cache_dir: str = "cache"
    # [heads.<name>]
    heads: dict = field(default_factory=dict)
    # [grid.<name>]
    grids: dict = field(default_factory=dict)


#: table -> {key in the file: attribute of Experiment}
SECTIONS = {
    "source": {k: k for k in ("data", "root", "download", "val_fraction", "test_fraction", "seed", "limit")},
    "backbone": {"name": "backbone", "weights": "weights", "layer": "layer"},
    "extract": {k: k for k in ("batch_size", "workers", "device", "precision", "channels_last", "decoder", "compile")},
    "cache": {"dir": "cache_dir"},
}
_TYPES = {f.name: f.type for f in fields(Experiment)}
_PY = {"str": (str,), "bool": (bool,), "int": (int,), "float": (float, int), "str | None": (str,)}


#: attribute -> (check, what a valid value is); types are checked first
_RANGES = {
    "val_fraction": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "test_fraction": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "limit": (lambda v: v >= 0, "0 (all) or a positive number of items"),
    "batch_size": (lambda v: v >= 1, "a positive number of images"),
    "workers": (lambda v: v >= -1, "-1 (automatic), 0 or a number of worker processes"),
    "precision": (lambda v: v in ("fp32", "bf16", "fp16"), "one of fp32, bf16, fp16"),
    "decoder": (lambda v: v in ("pil", "torchvision"), "pil or torchvision"),
    "device": (lambda v: v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdecimal()),
               "cpu, cuda or cuda:N"),
    "data": (lambda v: bool(v.strip()), "a non-empty source"),
    "backbone": (lambda v: bool(v.strip()), "a model name"),
}


def _check(where: str, attr: str, value):
    ok = _PY[_TYPES[attr]]
    if isinstance(value, bool) and bool not in ok:
        ok = ()
    if not isinstance(value, ok):
        want = _TYPES[attr].replace(" | None", "")
        raise FeatxError(f"{where}: expected a {want}, got {value!r}")
    check, what = _RANGES.get(attr, (None, ""))
    if check is not None and not check(value):
        raise FeatxError(f"{where}: expected {what}, got {value!r}")
    return value


def load_pipeline(path: str | Path) -> Experiment:
    """Read and validate a pipeline file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeatxError(f"pipeline file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeatxError(f"pipeline file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise FeatxError(f"pipeline file {path} cannot be read: {exc.strerror or exc}") from None
    exp = Experiment(name=path.stem)
    for table, body in doc.items():
        if table in ("heads", "grid"):
            if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
                raise FeatxError(f"{path}: [{table}] must hold one table per head, e.g. [{table}.svm]")
            from .heads import HEADS

            for head in body:
                if head not in HEADS:
                    raise FeatxError(f"{path}: [{table}.{head}]: unknown head (choose from {', '.join(HEADS)})")
            if table == "heads":
                exp.heads = body
            else:
                exp.grids = {h: {k: v if isinstance(v, list) else [v] for k, v in g.items()} for h, g in body.items()}
            continue
        if table not in SECTIONS:
            raise FeatxError(f"{path}: unknown table [{table}] (known: {', '.join([*SECTIONS, 'heads', 'grid'])})")
        if not isinstance(body, dict):
            raise FeatxError(f"{path}: {table} must be a table")
        for key, value in body.items():
            if key not in SECTIONS[table]:
                raise FeatxError(f"{path}: [{table}] has no key {key!r} (known: {', '.join(SECTIONS[table])})")
            attr = SECTIONS[table][key]
            setattr(exp, attr, _check(f"{path}: [{table}] {key}", attr, value))
    return exp
