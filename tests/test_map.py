"""`featx map` (issue 29): the embeddings on a 2-D map in one self-contained page that renders in a browser."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from conftest import TINY, make_folder
from featx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def cache(tmp_path):
    data = make_folder(tmp_path / "data", per_class=12)
    path = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", data, "--backbone", TINY, "--weights", "none", "--out", path).exit_code == 0
    return path


def _browser_points(page, tmp_path) -> tuple[int, str]:
    """The points the page says it drew (after its script ran) and what the browser logged; the page must also
    have drawn its gallery."""
    browser = shutil.which("chromium")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    import re

    m = re.search(r'data-points="(\d+)"', done.stdout)
    g = re.search(r'data-gallery="(\d+)"', done.stdout)
    assert g and int(g[1]) > 0, "no gallery drawn"
    return (int(m[1]) if m else -1), done.stderr


def test_map_without_umap_is_pca_and_says_so(cache, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    head = tmp_path / "h.skops"
    assert run("fit", cache, "--head", "logreg", "--no-baselines", "--no-tune", "-o", head).exit_code == 0
    out = run("map", cache, "--head-file", head, "-o", tmp_path / "m", "--sample", "20")
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "m" / "map.json").read_text())
    assert record["method"].startswith("PCA (umap-learn is not installed")
    assert record["sampled"] and 18 <= record["n_points"] <= 22 and record["n_rows"] == 36
    assert all("predicted" in p for p in record["points"]) and record["thumbnails"] is True
    gallery = record["gallery"]
    assert gallery["confusion_by"] == "the head's predictions" and len(gallery["classes"]) == 3
    for c, rows in gallery["classes"].items():  # typical and atypical items are points of that class
        assert all(record["points"][i]["label"] == c for i in rows["typical"] + rows["atypical"])
    for pair in gallery["confused"]:
        assert all(record["points"][i]["label"] == pair["label"] and record["points"][i]["predicted"] == pair["as"]
                   for i in pair["examples"])
    page = (tmp_path / "m" / "map.html").read_text()
    assert "right / wrong" in page and page.count("data:image/png;base64,") == 2  # built by the page's script
    if shutil.which("chromium"):
        drawn, log = _browser_points(tmp_path / "m" / "map.html", tmp_path)
        assert drawn == record["n_points"], log[-2000:]
        assert "Uncaught" not in log


@pytest.mark.skipif(importlib.util.find_spec("umap") is None, reason="umap-learn not installed")
def test_map_with_umap_renders_every_point(cache, tmp_path):
    out = run("map", cache, "-o", tmp_path / "m")
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "m" / "map.json").read_text())
    assert record["method"].startswith("UMAP") and record["n_points"] == 36 and not record["sampled"]
    xs = [p["x"] for p in record["points"]]
    assert min(xs) == 0 and max(xs) == 1
    if shutil.which("chromium"):
        drawn, log = _browser_points(tmp_path / "m" / "map.html", tmp_path)
        assert drawn == 36 and "Uncaught" not in log


def test_map_refuses_a_head_of_another_cache(cache, tmp_path):
    other = make_folder(tmp_path / "other", per_class=6, seed=3)
    c2 = tmp_path / "c2.h5"
    assert run("-q", "extract", "--data", other, "--backbone", TINY, "--weights", "none", "--out", c2).exit_code == 0
    assert run("fit", c2, "--head", "logreg", "--no-baselines", "--no-tune", "-o", tmp_path / "h2.skops").exit_code == 0
    out = run("map", cache, "--head-file", tmp_path / "h2.skops", "-o", tmp_path / "m")
    assert out.exit_code == 2 and "fitted on another cache" in out.output


def test_map_never_writes_over_its_audit(cache, tmp_path):
    """An audit record named map.json in the output folder is an input: refused, left as it was."""
    out = tmp_path / "m"
    out.mkdir()
    audit = out / "map.json"
    audit.write_text('{"cache_key": "x"}')
    result = run("map", cache, "-o", out, "--audit", audit)
    assert result.exit_code == 2 and audit.read_text() == '{"cache_key": "x"}'
