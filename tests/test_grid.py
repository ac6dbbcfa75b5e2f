"""Hyper-parameter search and reports."""

import base64
import io
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import TINY, needs_fashion
from featx import FeatxError, open_features
from featx.cli import main
from featx.extract import extract
from featx.heads.registry import HEADS, LOGREG_C_GRID
from featx.probe.search import parse_grid, search_head
from featx.data.files import ImageFolderSource


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_protocol_grids_are_the_published_ones():
    assert len(LOGREG_C_GRID) == 45 and LOGREG_C_GRID[0] == pytest.approx(1e-6)
    assert LOGREG_C_GRID[-1] == pytest.approx(1e5)
    assert HEADS["knn"].default_grid()["n_neighbors"] == (10, 20, 100, 200)


@pytest.mark.parametrize("overrides,message", [
    ({"C": ["abc"]}, "must be a float"),
    ({"gamma": [1.0]}, "has no parameter 'gamma'"),
    ({"C": []}, "grid for logreg parameter 'C' is empty"),
])
def test_bad_grids_fail_before_any_work(overrides, message):
    with pytest.raises(FeatxError, match=message):
        parse_grid("logreg", overrides)
    with pytest.raises(FeatxError, match="unknown head"):
        parse_grid("mlp")


@needs_fashion
def test_grid_writes_three_reports_that_render(fashion_cache, tmp_path):
    out = tmp_path / "rep"
    result = run("grid", fashion_cache, "--heads", "logreg knn", "--grid", "logreg.C=0.001,0.01,0.1,1",
                 "--grid", "knn.n_neighbors=5,10", "--shots", "1,4", "--tries", "2", "--out", out, "--jobs", "2")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    heads = {h["head"]: h for h in results["heads"]}
    assert set(heads) == {"logreg", "knn"}
    assert heads["logreg"]["best_params"]["C"] in (0.001, 0.01, 0.1, 1)
    assert len(heads["logreg"]["sweep"]) == 4 and len(heads["knn"]["sweep"]) == 4
    assert heads["logreg"]["test"]["top1"] > 0.6 and results["selection"] == "val"
    curve = results["few_shot"][results["best_head"]]
    assert [c["shots"] for c in curve] == [1, 4] and curve[0]["mean"] < curve[1]["mean"] + 0.2
    md = (out / "report.md").read_text()
    assert "## Summary" in md and "| logreg | C=" in md and "few-shot" in md
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 5  # C curve, k curve, weights curve, confusion matrix, per-class, reliability
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.size[0] > 100 and img.size[1] > 100
    assert "reliability diagram" in page and "confusion matrix" in page
    # the embedding map: the test items by label and where the best head is wrong, as many as it got wrong
    shown = results["best_head_map"]
    assert shown["points"] == results["sizes"]["test"] and "The test embeddings on a 2-D map (all " in page
    assert shown["wrong"] == round((1 - heads[results["best_head"]]["test"]["top1"]) * shown["points"])
    assert f"featx map {fashion_cache.name} --head-file HEAD" in md
    _renders_in_chromium(out / "report.html", tmp_path / "shot.png")
    if results["best_head"] == "logreg":  # a head with scores: temperature scaled, ECE before and after
        assert results["best_head_temperature"] > 0 and "best_head_ece_calibrated" in results
        assert "after temperature scaling" in page and "## Calibration" in md

    # featx report merges results files across runs.
    again = tmp_path / "rep2"
    assert run("grid", fashion_cache, "--heads", "svm", "--grid", "C=0.001,0.01", "--out", again).exit_code == 0
    svm = json.loads((again / "results.json").read_text())  # softmax of SVM scores: temperature scaling helps
    assert svm["best_head_ece_calibrated"] < svm["best_head_ece"], svm
    merged = run("report", out / "results.json", again / "results.json", "--format", "csv")
    assert merged.exit_code == 0
    lines = merged.stdout.strip().splitlines()
    assert lines[0].startswith("pipeline,backbone,weights,head") and len(lines) == 4


@needs_fashion
def test_warm_started_path_matches_cold_fits(fashion_cache):
    fs = open_features(fashion_cache)
    grid = parse_grid("logreg", {"C": [0.001, 0.01, 0.1]})
    warm = search_head("logreg", fs, grid=grid, jobs=1)
    cold = [search_head("logreg", fs, grid=parse_grid("logreg", {"C": [c]}), jobs=1).sweep[0] for c in grid["C"]]
    for w, c in zip(warm.sweep, cold):
        assert w["params"] == c["params"]
        assert abs(w["score"] - c["score"]) <= 0.02


def test_cross_validation_without_val_split_and_its_limits(image_folder, tiny_backbone, tmp_path):
    cache = extract(ImageFolderSource(image_folder, val_fraction=0, test_fraction=0.25), tiny_backbone,
                    out=tmp_path / "c.h5", progress=False).path
    fs = open_features(cache)
    assert "val" not in fs
    res = search_head("logreg", fs, grid=parse_grid("logreg", {"C": [0.01, 1.0]}), folds=3, jobs=1)
    assert res.selection == "3-fold CV" and len(res.sweep) == 2 and res.test["n"] == len(fs["test"])
    with pytest.raises(FeatxError, match="fewer than the 20 folds"):
        search_head("logreg", fs, grid=parse_grid("logreg", {"C": [1.0]}), folds=20)
    with pytest.raises(FeatxError, match="does not support class weights"):
        search_head("knn", fs, class_weight="balanced")
    balanced = search_head("svm", fs, grid=parse_grid("svm", {"C": [0.01]}), folds=3, class_weight="balanced")
    assert balanced.best_params["class_weight"] == "balanced"


def test_grid_cli_errors_are_one_line(image_folder, tiny_backbone, tmp_path):
    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    for args, message in [
        (["--heads", "mlp"], "unknown head 'mlp'"),
        (["--heads", "logreg", "--grid", "logreg.C=abc"], "must be a float"),
        (["--heads", "logreg", "--grid", "svm.C=1"], "head 'svm' is not among the searched heads"),
        (["--heads", "logreg", "--shots", "0,2"], "give positive integers"),
    ]:
        result = run("grid", cache, *args, "--out", tmp_path / "r")
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output  # usage
    assert not (tmp_path / "r").exists(), "nothing written when the input is bad"


def test_dask_backend_on_a_local_cluster(image_folder, tiny_backbone, tmp_path):
    pytest.importorskip("dask.distributed")
    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    result = run("grid", cache, "--heads", "logreg", "--grid", "C=0.01,1", "--backend", "dask", "--out",
                 tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "r" / "results.json").read_text())["heads"][0]["sweep"]) == 2
    bad = run("grid", cache, "--heads", "logreg", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9",
              "--out", tmp_path / "r2")
    assert bad.exit_code == 1 and "does not answer" in bad.stderr


def _renders_in_chromium(page, shot):
    """Open the report in headless Chromium (when installed) and check the screenshot shows plots."""
    import shutil
    import subprocess

    browser = shutil.which("chromium")
    if browser is None:
        return  # Chromium is not a dependency; the PNG checks above still ran
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={shot.parent / 'profile'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 20, "the page rendered blank"
    assert (pixels < 128).mean() > 0.02, "no plots drawn"


def test_heads_within_one_standard_error_are_tied_and_the_simplest_is_chosen():
    from featx.probe.selection import one_se_choice

    tied = one_se_choice({"rbf-svm": 0.9615, "knn": 0.9600, "logreg": 0.9550, "svm": 0.90}, n=52)
    assert tied["highest"] == "rbf-svm" and tied["chosen"] == "logreg"
    assert tied["tied"] == ["logreg", "knn", "rbf-svm"] and tied["se"] == pytest.approx(0.0267, abs=1e-4)
    clear = one_se_choice({"rbf-svm": 0.9615, "logreg": 0.90}, n=5000)  # many rows: the gap is real
    assert clear["chosen"] == "rbf-svm" and clear["tied"] == ["rbf-svm"]


def test_a_best_point_on_the_grid_edge_is_said(image_folder, tiny_backbone, tmp_path):
    from featx.probe.selection import edge_notes

    assert edge_notes("logreg", {"C": (0.01, 0.1, 1.0)}, {"C": 1.0}) == [
        "logreg: the best C=1 is the grid's largest value; the optimum may lie beyond it: extend the grid "
        "(--grid logreg.C=...)"]
    assert edge_notes("logreg", {"C": (0.01, 0.1, 1.0)}, {"C": 0.1}) == []
    assert edge_notes("logreg", {"C": (0.1, 1.0)}, {"C": 1.0}) == [], "two values: no interior to speak of"
    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    result = CliRunner().invoke(main, ["grid", str(cache), "--heads", "logreg,svm,knn", "--grid",
                                       "logreg.C=1e-6,1e-5,1e-4", "--no-baselines", "--jobs", "1",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    choice = results["choice"]
    assert choice["chosen"] in choice["tied"] and "one-standard-error rule" in choice["rule"]
    assert f"best head {choice['chosen']}" in result.stdout
    assert "Best head: **" in (tmp_path / "r" / "report.md").read_text()
    logreg = next(h for h in results["heads"] if h["head"] == "logreg")
    at_edge = logreg["best_params"]["C"] in (1e-6, 1e-4)
    assert any("logreg: the best C=" in n for n in results["notes"]) == at_edge
