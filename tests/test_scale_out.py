"""Scale-out: torchrun-sharded extraction equals a one-process run; the Dask grid scatters its data once."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY
from featx import FeatxError, open_features
from featx.extract import extract
from featx.cache.shards import find_shards, merge_shards, shard_items, shard_path
from featx.data.files import ImageFolderSource
from featx.cache.writer import FeatureWriter


def assert_same_cache(a, b, rtol=1e-4):
    fa, fb = open_features(a), open_features(b)
    assert fa.cache_key == fb.cache_key and fa.classes == fb.classes and fa.splits == fb.splits
    for s in fa.splits:
        np.testing.assert_array_equal(fa[s].ids, fb[s].ids)
        np.testing.assert_array_equal(fa[s].y, fb[s].y)
        np.testing.assert_allclose(fa[s].X, fb[s].X, rtol=rtol, atol=1e-5)
        assert fa[s].skipped == fb[s].skipped


def test_shards_are_contiguous_blocks_covering_every_item(image_folder):
    items = ImageFolderSource(image_folder).splits()["train"]
    blocks = [shard_items(items, r, 3) for r in range(3)]
    assert sum((b.ids for b in blocks), []) == items.ids
    assert max(len(b) for b in blocks) - min(len(b) for b in blocks) <= 1


def test_torchrun_two_processes_write_the_one_process_cache(image_folder, tmp_path):
    one = tmp_path / "one.h5"
    two = tmp_path / "two.h5"
    common = ["-m", "featx", "extract", "--data", str(image_folder), "--backbone", TINY, "--weights", "none",
              "--batch-size", "4", "--no-progress"]
    subprocess.run([sys.executable, *common, "--out", str(one)], check=True, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *common, "--out", str(two)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 shards joined by a virtual dataset" in run.stdout
    assert_same_cache(one, two)
    assert sorted(find_shards(two)[2]) == [0, 1], "joined: the shards stay, they hold the features"
    assert (tmp_path / "two.h5").stat().st_size < (tmp_path / "one.h5").stat().st_size / 2  # no feature copied
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in tmp_path.glob("two.*"):  # the folder moves whole: still readable
        p.rename(moved / p.name)
    assert_same_cache(one, moved / "two.h5")
    next(moved.glob("two.shard-1-of-2.h5")).unlink()
    with pytest.raises(FeatxError, match="two.shard-1-of-2.h5 is missing beside it"):
        open_features(moved / "two.h5")


def test_merge_join_equals_merge_copy(image_folder, tiny_backbone, tmp_path):
    from featx.cache.shards import join_shards

    source = ImageFolderSource(image_folder)
    for name in ("copied", "joined"):
        for rank in (0, 1):
            extract(source, tiny_backbone, out=tmp_path / f"{name}.h5", batch_size=8, progress=False,
                    shard=(rank, 2))
    merge_shards(tmp_path / "copied.h5", world=2)
    join_shards(tmp_path / "joined.h5", world=2)
    assert_same_cache(tmp_path / "copied.h5", tmp_path / "joined.h5")
    assert open_features(tmp_path / "joined.h5").meta["joined_shards"] == ["joined.shard-0-of-2.h5",
                                                                          "joined.shard-1-of-2.h5"]
    assert not find_shards(tmp_path / "copied.h5") and find_shards(tmp_path / "joined.h5")


def _interrupt_after(monkeypatch, n_batches):
    real = FeatureWriter.append
    calls = {"n": 0}

    def append(self, *args, **kwargs):
        if calls["n"] >= n_batches:
            raise KeyboardInterrupt  # what a kill looks like to the next run: committed batches only
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FeatureWriter, "append", append)
    return lambda: monkeypatch.setattr(FeatureWriter, "append", real)


def test_killed_shard_resumes_and_merge_waits_for_it(image_folder, tiny_backbone, tmp_path, monkeypatch):
    source = ImageFolderSource(image_folder)
    one = extract(source, tiny_backbone, out=tmp_path / "one.h5", batch_size=4, progress=False).path
    out = tmp_path / "sharded.h5"
    restore = _interrupt_after(monkeypatch, 1)
    with pytest.raises(FeatxError, match="next run resumes"):
        extract(source, tiny_backbone, out=out, batch_size=4, progress=False, shard=(1, 2))
    restore()
    extract(source, tiny_backbone, out=out, batch_size=4, progress=False, shard=(0, 2))
    with pytest.raises(FeatxError, match=r"shard\(s\) 1 unfinished of 2"):
        merge_shards(out, world=2)
    assert not out.exists(), "no merge while a shard is unfinished"
    resumed = extract(source, tiny_backbone, out=out, batch_size=4, progress=False, shard=(1, 2))
    assert resumed.resumed and resumed.n_new < resumed.n_items
    # a merge killed midway left a partial of the same cache: the next merge starts it over
    restore = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        merge_shards(out, world=2)
    restore()
    merge_shards(out, world=2)
    assert_same_cache(one, out)
    assert open_features(out).meta.get("shard") is None


def test_bad_shard_sets_are_refused_and_nothing_is_merged(image_folder, tiny_backbone, tmp_path):
    source = ImageFolderSource(image_folder)
    out = tmp_path / "c.h5"
    with pytest.raises(FeatxError, match="no shards"):
        merge_shards(out)
    extract(source, tiny_backbone, out=out, batch_size=8, progress=False, shard=(0, 2))
    with pytest.raises(FeatxError, match=r"shard\(s\) 1 missing of 2"):
        merge_shards(out)
    with pytest.raises(FeatxError, match="has shards of a 2-process run; run with 2 processes"):
        extract(source, tiny_backbone, out=out, batch_size=8, progress=False, shard=(0, 3))
    # rank 1 from a different cache (other split seed -> other key) dropped in under the right name
    other = ImageFolderSource(image_folder, seed=1)
    extract(other, tiny_backbone, out=tmp_path / "o.h5", batch_size=8, progress=False, shard=(1, 2))
    shard_path(tmp_path / "o.h5", 1, 2).rename(shard_path(out, 1, 2))
    with pytest.raises(FeatxError, match="shard 1 belongs to cache key"):
        merge_shards(out)
    assert not out.exists() and len(find_shards(out)[2]) == 2, "nothing merged, nothing deleted"


def test_merge_command_and_world_mismatch_are_one_line(image_folder, tmp_path):
    from click.testing import CliRunner

    from featx.cli import main

    result = CliRunner().invoke(main, ["merge", str(tmp_path / "none.h5")])
    assert result.exit_code == 2 and "no shards of" in result.stderr and "Traceback" not in result.output  # usage


def test_dask_grid_scatters_the_features_once(image_folder, tiny_backbone, tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    import joblib
    from dask.distributed import Client, LocalCluster

    import featx.probe.search as search

    seen = []
    real = search.parallel_config

    def spy(*args, **kwargs):
        seen.append(kwargs.get("scatter"))
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "parallel_config", spy)
    fs = open_features(extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5",
                               progress=False).path)
    with Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=False)), \
            joblib.parallel_config(backend="dask"):
        result = search.search_head("knn", fs, grid={"n_neighbors": (1, 3, 5)}, jobs=-1)
    assert len(result.sweep) == 3
    X, _ = fs["train"].labelled()
    assert len(seen) == 1 and any(isinstance(a, np.ndarray) and a.shape == X.shape for a in seen[0])


def test_batch_job_shards_without_torchrun_then_featx_merge(image_folder, tmp_path):
    """RANK/WORLD_SIZE set by hand (one batch job per shard): each writes its shard; `featx merge` joins them."""
    import os

    common = [sys.executable, "-m", "featx", "extract", "--data", str(image_folder), "--backbone", TINY,
              "--weights", "none", "--no-progress"]
    subprocess.run([*common, "--out", str(tmp_path / "one.h5")], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "MASTER_ADDR"}
    for rank in (1, 0):
        run = subprocess.run([*common, "--out", str(tmp_path / "two.h5")], capture_output=True, text=True,
                             env=dict(env, RANK=str(rank), WORLD_SIZE="2"))
        assert run.returncode == 0 and f"shard {rank} of 2 complete" in run.stdout, run.stderr
    merged = subprocess.run([sys.executable, "-m", "featx", "merge", str(tmp_path / "two.h5")], capture_output=True,
                            text=True)
    assert merged.returncode == 0, merged.stderr
    assert_same_cache(tmp_path / "one.h5", tmp_path / "two.h5")
