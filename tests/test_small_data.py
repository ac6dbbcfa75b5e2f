"""Few-shot sized data works end to end: 3 classes of 6 images, and the Stanford Dogs layout at that size."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import TINY, make_folder
from featx import open_features
from featx.cli import main
from featx.heads.registry import trained_heads
from test_adapters import make_stanford_dogs


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("layout", ["folder", "stanford_dogs"])
def test_extract_every_head_and_a_default_grid_run_to_the_end(layout, tmp_path):
    data = (make_folder(tmp_path / "data", per_class=6) if layout == "folder"
            else make_stanford_dogs(tmp_path / "dogs", train_per_class=6, test_per_class=2))
    cache = tmp_path / "c.h5"
    result = run("extract", "--data", data, "--backbone", TINY, "--weights", "none", "--out", cache)
    assert result.exit_code == 0, result.output
    assert "carved from train" in result.stderr  # it says what it carved
    fs = open_features(cache)
    for split in ("train", "val", "test"):
        assert set(fs[split].y.tolist()) == {0, 1, 2}, split  # every class in every split
    n_train = len(fs["train"])
    for head in trained_heads():
        fitted = run("fit", cache, "--head", head, "--out", tmp_path / f"{head}.skops", "--no-baselines")
        assert fitted.exit_code == 0, (head, fitted.output)
    card = json.loads((tmp_path / "knn.json").read_text())
    assert card["params"]["n_neighbors"] == n_train  # k = 20 lowered to the training rows, and recorded
    grid = run("grid", cache, "--out", tmp_path / "r", "--no-baselines")
    assert grid.exit_code == 0, grid.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {h["head"] for h in results["heads"]} == set(trained_heads()) and not results["failed"]
    knn = next(h for h in results["heads"] if h["head"] == "knn")
    assert max(knn["grid"]["n_neighbors"]) == n_train and "n_neighbors=100 needs at least 100" in grid.stderr
    assert "n_neighbors=100 needs" in (tmp_path / "r" / "report.md").read_text()


def test_a_failing_head_does_not_lose_the_others(image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none",
               "--out", cache).exit_code == 0
    from featx.probe import grid as grid_module

    real = grid_module.search_head

    def search(head, *args, **kwargs):
        if head == "svm":
            raise RuntimeError("out of luck")
        return real(head, *args, **kwargs)

    monkeypatch.setattr(grid_module, "search_head", search)
    result = run("grid", cache, "--heads", "logreg,svm,knn", "--out", tmp_path / "r", "--no-baselines")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [h["head"] for h in results["heads"]] == ["logreg", "knn"]
    assert results["failed"] == [{"head": "svm", "error": "RuntimeError: out of luck"}]
    assert "svm failed" in (tmp_path / "r" / "report.md").read_text()


def test_fit_finds_the_cache_extract_wrote_with_a_limit_or_says_which_option_differs(image_folder, tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(f'[source]\ndata = "{image_folder}"\n[backbone]\nname = "{TINY}"\nweights = "none"\n'
                 f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    assert run("extract", "--pipeline", p, "--limit", "4").exit_code == 0
    assert run("fit", "--pipeline", p, "--limit", "4", "--head", "logreg", "--no-baselines").exit_code == 0
    missing = run("fit", "--pipeline", p, "--head", "logreg", "--no-baselines")
    assert missing.exit_code == 2
    assert "limit 4 there, 0 here" in missing.stderr and "--limit 4" in missing.stderr, missing.stderr
