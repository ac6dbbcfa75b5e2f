"""featx audit: each detector on constructed data with known answers, the manifest round trip, thumbnails."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY
from featx import open_features
from featx.analysis.audit import blocked_topk, label_issues, near_duplicates, outliers
from featx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _blobs(rng, n, d=32, k=4):
    centres = rng.normal(0, 1, (k, d)) * 4
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_blocked_search_equals_brute_force():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    sims, idx = blocked_topk(X, 5, block=64)
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Z @ Z.T
    np.fill_diagonal(S, -np.inf)
    np.testing.assert_array_equal(idx[:, 0], S.argmax(axis=1))
    np.testing.assert_allclose(sims, -np.sort(-S, axis=1)[:, :5], rtol=1e-5, atol=1e-6)


def test_near_duplicates_across_splits_are_leakage():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 32)).astype(np.float32)  # distinct items: cosine well below 0.95
    splits = np.array(["train"] * 150 + ["test"] * 50)
    X[160] = X[3] + rng.normal(0, 0.01, 32)   # a near-duplicate of a train item in test: leakage
    X[10] = X[4] * 1.0                        # an exact duplicate within train
    sims, idx = blocked_topk(X, 10)
    pairs, groups, leak = near_duplicates(sims, idx, splits, threshold=0.95)
    found = {(a, b) for a, b, _ in pairs}
    assert found == {(3, 160), (4, 10)} and leak["train/test"] == 1 and len(groups) == 2


def test_flipped_labels_are_found_by_confident_learning():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(2)
    X, y = _blobs(rng, 400)
    flipped = rng.choice(400, 12, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % 4
    ranked, predicted = label_issues(X, noisy)
    top = set(ranked[:12].tolist())
    assert len(top & set(flipped.tolist())) >= 11  # precision among the top k = injected
    assert (predicted[flipped] == y[flipped]).mean() > 0.9  # and the suggested label is the true one


def test_an_item_far_from_everything_is_an_outlier():
    rng = np.random.default_rng(3)
    X, _ = _blobs(rng, 300)
    X[7] = rng.normal(size=32) * 0.1 + np.linspace(-5, 5, 32)  # a direction no class has
    sims, _ = blocked_topk(X, 10)
    score, flagged, fence = outliers(sims)
    assert flagged[0] == 7 and score[7] > fence


def test_audit_on_a_folder_thumbnails_and_the_manifest_round_trip(image_folder, tmp_path):
    pytest.importorskip("cleanlab")
    dup = image_folder / "square" / "copy_of_circle.jpg"   # the same picture in two classes
    shutil.copy(image_folder / "circle" / "circle_001.jpg", dup)
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none",
               "--out", cache).exit_code == 0
    manifest = tmp_path / "clean.csv"
    # random-init features of three drawn shapes are all alike: only the exact copy is a duplicate at 0.999
    result = run("audit", cache, "--out", tmp_path / "a", "--write-manifest", manifest, "--threshold", "0.999")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    pairs = {frozenset((p["a"]["id"], p["b"]["id"])) for p in record["duplicates"]["pairs"] if p["exact"]}
    assert frozenset(("circle/circle_001.jpg", "square/copy_of_circle.jpg")) in pairs
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 2  # the pair's thumbnails
    rows = list(csv.DictReader(open(manifest, encoding="utf-8")))
    ids = {r["path"].split("shapes/", 1)[1] for r in rows}
    assert len(ids & {"circle/circle_001.jpg", "square/copy_of_circle.jpg"}) == 1  # one copy kept
    from featx.analysis.audit import flagged_rows

    left_out, _ = flagged_rows(record)
    assert len(rows) == 37 - len(left_out) and not ids & left_out
    again = run("-q", "extract", "--data", manifest, "--backbone", TINY, "--weights", "none",
                "--out", tmp_path / "clean.h5")
    assert again.exit_code == 0, again.output
    assert sum(len(open_features(tmp_path / "clean.h5")[s]) for s in ("train", "val", "test")
               if s in open_features(tmp_path / "clean.h5")) == len(rows)
    assert (image_folder / "square" / "copy_of_circle.jpg").exists()  # nothing deleted


def test_a_manifest_needs_image_files(fashion_cache, tmp_path):
    result = run("audit", fashion_cache, "--out", tmp_path / "a", "--write-manifest", tmp_path / "m.csv")
    assert result.exit_code == 1 and "a manifest lists image files" in result.stderr
    assert (tmp_path / "a" / "audit.json").exists()  # the audit itself was written
