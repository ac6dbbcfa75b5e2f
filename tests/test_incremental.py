"""Growing datasets: a new extraction copies unchanged rows from earlier caches and embeds only the rest."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY, draw, make_folder
from featx import FeatxError, open_features
from featx.cli import main
from featx.data.files import ImageFolderSource
from featx.extract import extract


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _by_id(fs):
    return {split: {str(i): (x, y) for i, x, y in zip(fs[split].ids, fs[split].X, fs[split].y)} for split in fs.splits}


def _same_as_fresh(incremental, fresh):
    a, b = open_features(incremental), open_features(fresh)
    assert a.classes == b.classes and a.splits == b.splits
    for split in b.splits:
        assert list(a[split].ids) == list(b[split].ids), split
        np.testing.assert_array_equal(a[split].y, b[split].y)
        np.testing.assert_allclose(a[split].X, b[split].X, rtol=1e-5, atol=1e-5)  # fp32 rounding


def test_added_removed_modified_relabelled_and_a_new_class(tmp_path, tiny_backbone):
    data = make_folder(tmp_path / "data", per_class=12)
    cache_dir = tmp_path / "cache"
    first = extract(ImageFolderSource(data), tiny_backbone, cache_dir=cache_dir, progress=False)
    rng = np.random.default_rng(1)
    draw("circle", rng).save(data / "circle" / "circle_new.jpg")             # added
    (data / "square" / "square_000.png").unlink()                            # removed
    img = data / "stripes" / "stripes_001.jpg"
    draw("square", rng).save(img)                                            # modified (new content)
    shutil.move(data / "circle" / "circle_002.jpg", data / "square" / "circle_002.jpg")  # relabelled
    (data / "blobs").mkdir()                                                 # a new class, sorted first
    for i in range(4):
        draw("circle", rng).save(data / "blobs" / f"blob_{i}.jpg")
    grown = extract(ImageFolderSource(data), tiny_backbone, cache_dir=cache_dir, progress=False)
    assert grown.path != first.path and not grown.reused
    n_items = grown.n_items
    assert grown.n_reused + grown.n_new == n_items
    assert grown.n_new == 1 + 1 + 1 + 4  # added, modified, relabelled (its id is its path), new class
    assert grown.reused_from == [{"path": str(first.path), "cache_key": first.cache_key, "rows": grown.n_reused}]
    assert open_features(grown.path).meta["reused_from"][0]["cache_key"] == first.cache_key
    fresh = extract(ImageFolderSource(data), tiny_backbone, out=tmp_path / "fresh.h5", progress=False, reuse="none")
    assert fresh.n_reused == 0
    _same_as_fresh(grown.path, fresh.path)


def test_a_relabelled_item_keeps_its_features_and_gets_its_new_label(tmp_path, tiny_backbone):
    data = make_folder(tmp_path / "data", per_class=6)
    manifest = tmp_path / "m.csv"
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name},train" for p in sorted(data.rglob("*.*"))]
    manifest.write_text("\n".join(rows) + "\n")
    from featx.data.files import ManifestSource

    first = extract(ManifestSource(manifest), tiny_backbone, cache_dir=tmp_path / "cache", progress=False)
    rows[0] = rows[0].replace(",circle,", ",square,")
    manifest.write_text("\n".join(rows) + "\n")
    again = extract(ManifestSource(manifest), tiny_backbone, cache_dir=tmp_path / "cache", progress=False)
    assert again.n_new == 0 and again.n_reused == len(rows)
    before, after = _by_id(open_features(first.path))["train"], _by_id(open_features(again.path))["train"]
    item = rows[0].split(",")[0]
    np.testing.assert_array_equal(after[item][0], before[item][0])
    assert open_features(again.path).classes[after[item][1]] == "square"


def test_the_cli_says_what_it_reused_and_refuses_a_cache_of_other_features(tmp_path, image_folder):
    out = tmp_path / "cache"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none",
               "--cache-dir", out).exit_code == 0
    first = next(out.rglob("*.h5"))
    draw("circle", np.random.default_rng(5)).save(image_folder / "circle" / "extra.jpg")
    grown = run("extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--cache-dir", out)
    assert grown.exit_code == 0, grown.output
    assert f"reused 36 rows from {first}, embedded 1 new" in grown.stdout
    other = tmp_path / "other.h5"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--precision",
               "bf16", "--out", other).exit_code == 0
    refused = run("extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--reuse", other,
                  "--out", tmp_path / "x.h5")
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert f"--reuse: {other}: its rows are other features (precision 'fp32' here, 'bf16' there)" in refused.stderr


def test_a_rank_sample_feeds_the_full_extraction(tmp_path, tiny_backbone):
    data = make_folder(tmp_path / "data", per_class=12)
    source = ImageFolderSource(data)
    sample = extract(source.sampled(12), tiny_backbone, cache_dir=tmp_path / "cache", progress=False)
    full = extract(ImageFolderSource(data), tiny_backbone, cache_dir=tmp_path / "cache", progress=False)
    assert full.n_reused == 12 and full.reused_from[0]["path"] == str(sample.path)


def test_a_cache_from_before_fingerprints_feeds_the_new_one_for_in_memory_datasets(fashion_cache, tmp_path):
    """The default cache of an earlier featx (no per-row fingerprints, splits carved by the old rule) gives its
    rows to the extraction under the new key: only the carving changed, not one image."""
    import h5py

    from featx.backbones import load_backbone
    from featx.data.layout import make_source

    old = tmp_path / "cache" / "fashionmnist" / "old.h5"
    old.parent.mkdir(parents=True)
    shutil.copy(fashion_cache, old)
    with h5py.File(old, "a") as f:
        for split in ("train", "val", "test"):
            if split in f:
                del f[split]["fingerprints"]
    source = make_source("torchvision:FashionMNIST", root="cache/datasets", limit=100, val_fraction=0.2)
    result = extract(source, load_backbone("mobilenet_v2", "IMAGENET1K_V1"), cache_dir=tmp_path / "cache",
                     progress=False)
    assert result.n_reused > 0 and result.reused_from[0]["path"] == str(old)
    assert result.n_new + result.n_reused == result.n_items
