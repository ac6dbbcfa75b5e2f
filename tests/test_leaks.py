"""Leakage-aware metrics (issue 29): with an audit of the same cache, `featx fit` reports val/test also without
the items that copy a train item, and the card records both."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import TINY
from featx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def leaky(tmp_path):
    """train/ and test/ folders of distinct picture tiles (scikit-learn's two sample photos, one class each), with 3
    train tiles copied into test under other names."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root = tmp_path / "data"
    for name, photo in zip(("china", "flower"), load_sample_images().images):
        h, w, _ = photo.shape
        tiles = [photo[r:r + 64, c:c + 64] for r in range(0, h - 63, 64) for c in range(0, w - 63, 64)]
        tiles = [t for t in tiles if t.mean(axis=2).std() > 6][:24]
        for i, t in enumerate(tiles):
            split = "test" if i % 4 == 0 else "train"
            (root / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(t).save(root / split / name / f"{name}_{i:03d}.jpg", quality=90)
    for src in (root / "train" / "china" / "china_001.jpg", root / "train" / "china" / "china_002.jpg",
                root / "train" / "flower" / "flower_003.jpg"):
        shutil.copy(src, root / "test" / src.parent.name / f"copied_{src.name}")
    return root


def test_fit_reports_test_without_the_leaked_items(leaky, tmp_path, monkeypatch):
    pytest.importorskip("cleanlab")
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", leaky, "--backbone", TINY, "--weights", "none", "--val-fraction", "0",
               "--out", cache).exit_code == 0  # no val carved: every original stays in train
    plain = run("fit", cache, "--head", "logreg", "--no-baselines", "-o", tmp_path / "h0.skops")
    assert plain.exit_code == 0 and "without the" not in plain.output  # no audit yet: one score
    required = run("fit", cache, "--head", "logreg", "--no-baselines", "--exclude-leaked")
    assert required.exit_code == 2 and "run `featx audit" in required.output
    audited = run("audit", cache)  # the default report folder, where fit looks
    assert audited.exit_code == 0, audited.output
    record = json.loads((tmp_path / "reports" / "audit-c" / "audit.json").read_text())
    assert record["duplicates"]["leakage"]["train/test"] >= 3
    out = run("fit", cache, "--head", "logreg", "--no-baselines", "-o", tmp_path / "h.skops")
    assert out.exit_code == 0, out.output
    assert "test without the 3 item(s) that copy a train item" in out.output
    card = json.loads((tmp_path / "h.json").read_text())
    assert card["leakage"]["excluded"] == {"test": 3}
    assert card["metrics"]["test_without_leaked"]["n"] == card["metrics"]["test"]["n"] - 3
    grid = run("grid", cache, "--heads", "logreg", "--no-baselines", "--no-progress", "--out", tmp_path / "g")
    assert grid.exit_code == 0, grid.output
    assert "test without the 3 item(s) that copy a train item" in grid.output
    row = json.loads((tmp_path / "g" / "results.json").read_text())["heads"][0]
    assert row["test_without_leaked"]["n"] == row["test"]["n"] - 3
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**record, "cache_key": "someone-else"}))
    refused = run("fit", cache, "--head", "logreg", "--no-baselines", "--audit", other)
    assert refused.exit_code == 2 and "audit of another cache" in refused.output
