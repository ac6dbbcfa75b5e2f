"""featx audit: each detector on constructed data with known answers, the manifest round trip, thumbnails."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY
from featx import open_features
from featx.cache.index import cosine_self_top_k
from featx.audit.duplicates import near_duplicates
from featx.audit.labels import label_issues, outliers
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
    sims, idx = cosine_self_top_k(X, 5, block=64)
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
    sims, idx = cosine_self_top_k(X, 10)
    pairs, groups, leak = near_duplicates(sims, idx, splits, threshold=0.95)
    found = {(a, b) for a, b, _ in pairs}
    assert found == {(3, 160), (4, 10)} and leak["train/test"] == 1 and len(groups) == 2


def _photo_tiles():
    """Distinct pictures with the statistics of real photos: the non-overlapping 64 x 64 tiles of scikit-learn's
    two sample photos (neighbouring tiles of one photo are hard negatives: same colours, same texture)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    tiles = []
    for photo in load_sample_images().images:
        h, w, _ = photo.shape
        tiles += [Image.fromarray(photo[r:r + 64, c:c + 64]) for r in range(0, h - 63, 64) for c in range(0, w - 63, 64)]
    return tiles


def _reupload(img, how: str, amount: int):
    """What a re-upload does to a picture: a crop of ``amount`` pixels a side, or a resize to ``amount`` pixels and
    back, then JPEG at quality 75."""
    import io

    from PIL import Image

    w, h = img.size
    if how == "crop":
        img = img.crop((amount, amount, w - amount, h - amount)).resize((w, h), Image.Resampling.BILINEAR)
    else:
        img = img.resize((amount, amount), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_copies_are_found_on_pixels_and_distinct_tiles_are_not():
    from featx.audit.copies import find_copies, thumbnails

    # pictures, not featureless patches of sky (those are compared by their grey level alone)
    tiles = [t for t in _photo_tiles() if np.asarray(t.convert("L")).std() > 6]
    n = len(tiles)
    edits = [("crop", 2), ("crop", 5), ("resize", 56), ("resize", 72), ("crop", 1), ("resize", 48), ("crop", 4),
             ("resize", 60)]
    originals = list(range(3, n, n // len(edits)))[:len(edits)]
    images = tiles + [_reupload(tiles[i], how, amount) for i, (how, amount) in zip(originals, edits)]
    thumbs, bad = thumbnails(lambda img: img, images)
    assert not bad and thumbs.shape[1:] == (32, 32)
    pairs, scores, _, checked = find_copies(thumbs)
    assert {tuple(p) for p in pairs.tolist()} == {(i, n + k) for k, i in enumerate(originals)}
    assert checked >= len(originals) and scores.min() >= 0.988


def test_the_separable_zoom_is_grid_sample():
    """The registration grid's matrix products sample exactly where torch's grid_sample does."""
    import torch

    from featx.audit.copies import _apply, _axis_scale, _warp

    X = torch.rand(6, 1, 28, 28)
    for s in (0.76, 0.9, 1.0):
        p = torch.tensor([s, 0.0, 0.0]).repeat(6, 1)
        assert torch.allclose(_apply(_axis_scale(28, s), X), _warp(X, p), atol=1e-5)


def test_unreadable_items_are_recorded_not_fatal():
    from featx.audit.copies import register_pairs, thumbnails

    tiles = _photo_tiles()[:4]

    def opener(i):
        if i == 2:
            raise OSError("truncated file")
        return tiles[i]

    thumbs, bad = thumbnails(opener, range(4))
    assert bad == [2]
    scores = register_pairs(thumbs, np.array([[0, 1], [1, 2]]))
    assert scores[0] < 0.9 and np.isnan(scores[1])


def test_flipped_labels_are_found_by_confident_learning():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(2)
    X, y = _blobs(rng, 400)
    flipped = rng.choice(400, 12, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % 4
    ranked, predicted, confidence = label_issues(X, noisy)
    top = set(ranked[:12].tolist())
    assert len(top & set(flipped.tolist())) >= 11  # precision among the top k = injected
    assert (predicted[flipped] == y[flipped]).mean() > 0.9  # and the suggested label is the true one
    assert ((confidence >= 0) & (confidence <= 1)).all() and confidence[flipped].mean() > 0.5


def test_an_item_far_from_everything_is_an_outlier():
    rng = np.random.default_rng(3)
    X, _ = _blobs(rng, 300)
    X[7] = rng.normal(size=32) * 0.1 + np.linspace(-5, 5, 32)  # a direction no class has
    sims, _ = cosine_self_top_k(X, 10)
    score, flagged, fence = outliers(sims)
    assert flagged[0] == 7 and score[7] > fence


@pytest.fixture
def photo_folder(tmp_path):
    """``photos/<china|flower>/*.jpg``: the picture tiles of scikit-learn's two sample photos (36 of them), each
    class the tiles of one photo. (The drawn shapes of the other tests are one picture with noise, to a pixel
    check: every striped image is the same stripes.)"""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root = tmp_path / "photos"
    for name, photo in zip(("china", "flower"), load_sample_images().images):
        (root / name).mkdir(parents=True)
        h, w, _ = photo.shape
        tiles = [photo[r:r + 64, c:c + 64] for r in range(0, h - 63, 64) for c in range(0, w - 63, 64)]
        tiles = [t for t in tiles if t.mean(axis=2).std() > 6][:18]
        for i, t in enumerate(tiles):
            Image.fromarray(t).save(root / name / f"{name}_{i:03d}.jpg", quality=90)
    return root


def test_audit_on_a_folder_thumbnails_and_the_manifest_round_trip(photo_folder, tmp_path):
    pytest.importorskip("cleanlab")
    from PIL import Image

    shutil.copy(photo_folder / "china" / "china_001.jpg", photo_folder / "flower" / "copy_of_china.jpg")
    # and a re-encoded, cropped copy of another: not identical, the same picture
    _reupload(Image.open(photo_folder / "china" / "china_004.jpg"), "crop", 3).save(
        photo_folder / "flower" / "reupload.jpg")
    # and a JPEG re-encode at the same size: a copy, but not "exact" (its pixels differ)
    Image.open(photo_folder / "china" / "china_007.jpg").save(photo_folder / "flower" / "reencoded.jpg", quality=60)
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", photo_folder, "--backbone", TINY, "--weights", "none",
               "--out", cache).exit_code == 0
    manifest = tmp_path / "clean.csv"
    result = run("audit", cache, "--out", tmp_path / "a", "--write-manifest", manifest)
    assert result.exit_code == 0, result.output
    assert "Copies (the same picture on pixels" in result.output
    assert re.search(r"left out \d+ \(3 copies, \d+ likely label errors, \d+ outliers\)", result.stdout), result.stdout
    assert "audit: reading thumbnails: 39/39 items" in result.stderr  # progress, as lines in a log
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    pairs = {frozenset((p["a"]["id"], p["b"]["id"])): p for p in record["duplicates"]["pairs"]}
    assert pairs[frozenset(("china/china_001.jpg", "flower/copy_of_china.jpg"))]["exact"]
    assert not pairs[frozenset(("china/china_004.jpg", "flower/reupload.jpg"))]["exact"]
    reencoded = pairs[frozenset(("china/china_007.jpg", "flower/reencoded.jpg"))]
    assert not reencoded["exact"] and reencoded["kind"] == "copy", "a re-encode is a copy, never exact"
    assert len(pairs) == 3  # the other tiles of each photo are alike, not copies
    assert record["duplicates"]["exact_pairs"] == 1
    assert all(not p["leak"] for p in record["duplicates"]["look_alikes"]["pairs"]), "a look-alike is never LEAK"
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 4  # both pairs' thumbnails
    rows = list(csv.DictReader(open(manifest, encoding="utf-8")))
    ids = {r["path"].split("photos/", 1)[1] for r in rows}
    assert len(ids & {"china/china_001.jpg", "flower/copy_of_china.jpg"}) == 1  # one copy kept
    assert len(ids & {"china/china_004.jpg", "flower/reupload.jpg"}) == 1
    from featx.audit.run import flagged_rows

    left_out, _ = flagged_rows(record)
    assert [left_out.get(i) for i in ("china/china_007.jpg", "flower/reencoded.jpg")].count("copy") == 1
    assert len(rows) == 39 - len(left_out) and not ids & set(left_out)
    again = run("-q", "extract", "--data", manifest, "--backbone", TINY, "--weights", "none",
                "--out", tmp_path / "clean.h5")
    assert again.exit_code == 0, again.output
    assert sum(len(open_features(tmp_path / "clean.h5")[s]) for s in ("train", "val", "test")
               if s in open_features(tmp_path / "clean.h5")) == len(rows)
    assert (photo_folder / "flower" / "copy_of_china.jpg").exists()  # nothing deleted


def test_without_the_images_only_identical_embeddings_are_copies(image_folder, tmp_path):
    shutil.copy(image_folder / "circle" / "circle_001.jpg", image_folder / "square" / "copy_of_circle.jpg")
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none",
               "--out", cache).exit_code == 0
    shutil.rmtree(image_folder)  # the dataset moved away: the audit still runs, on the embeddings
    result = run("audit", cache, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "no pixel check" in result.output
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert [{p["a"]["id"], p["b"]["id"]} for p in record["duplicates"]["pairs"]] == \
        [{"circle/circle_001.jpg", "square/copy_of_circle.jpg"}]
    assert not record["duplicates"]["pixel_check"]["done"]
    only = record["duplicates"]["pairs"][0]
    assert only["identical_embeddings"] and not only["exact"], "without the pixels, exact cannot be known"


def test_relabel_applies_only_sure_suggestions_and_says_what_it_left_out():
    from featx.audit.run import flagged_rows

    item = lambda i, split="train": {"id": i, "split": split, "row": int(i[1:])}  # noqa: E731
    record = {"duplicates": {"groups": [[item("r1", "test"), item("r2")]]},
              "label_issues": [{**item("r3"), "suggested": "cat", "confidence": 0.97},
                               {**item("r4"), "suggested": "dog", "confidence": 0.55}],
              "outliers": {"items": [item("r5")]}}
    drop, new = flagged_rows(record, relabel=True, min_confidence=0.9)
    assert new == {"r3": "cat"}, "only the sure suggestion is applied"
    assert drop == {"r2": "copy", "r4": "label", "r5": "outlier"}, "the unsure one and the outlier are left out, named"
    drop, new = flagged_rows(record)
    assert new == {} and drop["r3"] == "label"


def test_a_manifest_needs_image_files(fashion_cache, tmp_path):
    result = run("audit", fashion_cache, "--out", tmp_path / "a", "--write-manifest", tmp_path / "m.csv")
    assert result.exit_code == 2 and "a manifest lists image files" in result.stderr
    assert not (tmp_path / "a").exists()  # refused before any work
