"""Heads on caches larger than memory (issue 28): `featx fit --memory-budget` trains logreg/svm streaming -- the same
objective and solution as the full-batch solver, without ever holding the train split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from featx import open_features
from featx.cache.store import SplitView
from featx.cli import main
from featx.heads.registry import make_head
from featx.heads.streaming import fit_streaming, parse_size
from test_index import synthetic_cache


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("head_name", ["logreg", "svm"])
def test_a_streamed_fit_is_the_full_batch_fit(head_name, tmp_path, monkeypatch):
    cache = synthetic_cache(tmp_path / "c.h5", n_train=3_000, n_test=500, d=24, k=6)
    fs = open_features(cache)
    full = make_head(head_name).fit(*fs["train"].labelled())
    monkeypatch.setattr("featx.heads.streaming.BLOCK_BYTES", 24 * 4 * 700)  # 700 rows a block: five blocks
    streamed, record = fit_streaming(head_name, make_head(head_name), fs["train"])
    assert record["block_rows"] == 700 and record["passes"] >= 2
    a, b = full.named_steps["clf"], streamed.named_steps["clf"]
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=2e-3, atol=2e-3 * np.abs(a.coef_).max())
    X = fs["test"].X
    assert np.mean(full.predict(X) == streamed.predict(X)) >= 0.995


def test_fit_streams_over_the_budget_and_never_loads_the_split(tmp_path, monkeypatch):
    cache = synthetic_cache(tmp_path / "c.h5", n_train=4_000, n_test=500, d=32, k=8)
    reference = run("fit", cache, "--head", "logreg", "--no-tune", "--no-baselines", "-o", tmp_path / "full.skops")
    assert reference.exit_code == 0, reference.output

    def refuse(self):
        raise AssertionError("the whole split was read")

    monkeypatch.setattr(SplitView, "labelled", refuse)  # the streamed path must read blocks only
    out = run("fit", cache, "--head", "logreg", "--no-baselines", "--memory-budget", "100KB",
              "-o", tmp_path / "streamed.skops")
    assert out.exit_code == 0, out.output
    assert "tuning needs the split in memory" in out.stderr and "streaming" in out.stderr
    card = json.loads((tmp_path / "streamed.json").read_text())
    full = json.loads((tmp_path / "full.json").read_text())
    assert card["streaming"]["memory_budget"] == 100 * 1024 and card["streaming"]["train_bytes"] == 4_000 * 32 * 4
    assert abs(card["metrics"]["test"]["top1"] - full["metrics"]["test"]["top1"]) <= 0.003
    assert "skipped" in card["calibration"]
    knn = run("fit", cache, "--head", "knn", "--no-baselines", "--memory-budget", "100KB")
    assert knn.exit_code == 1 and "cannot be fitted streaming" in knn.output
    grid = run("grid", cache, "--heads", "logreg", "--memory-budget", "100KB", "--out", tmp_path / "g")
    assert grid.exit_code == 1 and "grid needs it in memory" in grid.output


def test_memory_budget_sizes():
    assert parse_size("2GB") == 2 << 30 and parse_size("512m") == 512 << 20 and parse_size("1.5 GiB") == 3 << 29
    assert parse_size("100000") == 100000
    for bad in ("lots", "-1GB", "0"):
        with pytest.raises(Exception, match="memory-budget"):
            parse_size(bad)
