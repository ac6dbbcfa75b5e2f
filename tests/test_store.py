"""The HDF5 cache contract: schema, commit protocol, resume, refusal of unfinished files."""

import json

import h5py
import numpy as np
import pytest

from featx import FeatxError, FeatxUsageError, open_features
from featx.cache.store import SCHEMA_VERSION, partial_path
from featx.cache.writer import FeatureWriter

ATTRS = {
    "cache_key": "k1",
    "backbone": "toy",
    "weights": "none",
    "weights_sha256": "",
    "transform": {"input_size": [3, 8, 8]},
    "source": {"kind": "test"},
    "precision": "fp32",
}


def _writer(path, key="k1", sizes=None):
    return FeatureWriter(path, attrs={**ATTRS, "cache_key": key}, classes=["a", "b"],
                         split_sizes=sizes or {"train": 5, "test": 2}, feature_dim=3, chunk_rows=2)


def _rows(n, start=0):
    return np.arange(start * 3, (start + n) * 3, dtype=np.float32).reshape(n, 3)


def test_round_trip_plain_h5py_and_reader(tmp_path):
    path = tmp_path / "c.h5"
    with _writer(path) as w:
        w.append("train", _rows(3), [0, 1, 0], ["t0", "t1", "t2"])
        w.append("train", _rows(1, 3), [1], ["t3"], skipped=[("t4", "OSError: broken")])
        w.append("test", _rows(2), [1, -1], ["s0", "s1"])
        assert not path.exists(), "the final name appears only when complete"
        w.finalize()
    assert path.exists() and not partial_path(path).exists()

    with h5py.File(path, "r") as f:  # what another project sees with plain h5py
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f.attrs["complete"]
        assert json.loads(f.attrs["transform"]) == {"input_size": [3, 8, 8]}
        assert [c.decode() for c in f["classes"][()]] == ["a", "b"]
        assert f["train/features"].dtype == np.float32 and f["train/features"].shape == (4, 3)
        assert f["train/labels"].dtype == np.int64
        assert f["train"].attrs["n_committed"] == 4
        assert json.loads(f["train"].attrs["skipped"]) == [{"id": "t4", "reason": "OSError: broken"}]

    fs = open_features(path)
    assert fs.classes == ("a", "b") and set(fs.splits) == {"train", "test"}
    assert fs.meta["source"] == {"kind": "test"}
    np.testing.assert_array_equal(fs["train"].X, np.vstack([_rows(3), _rows(1, 3)]))
    np.testing.assert_array_equal(fs["test"].y, [1, -1])
    assert list(fs["train"].ids) == ["t0", "t1", "t2", "t3"]
    np.testing.assert_array_equal(fs["train"].rows(1, 3), _rows(2, 1))
    assert fs["train"].skipped[0]["id"] == "t4"


def test_unfinished_cache_is_never_read_as_complete(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path).open()
    w.append("train", _rows(2), [0, 1], ["t0", "t1"])
    w.close()
    with pytest.raises(FeatxError, match="does not exist.*unfinished"):
        open_features(path)
    with pytest.raises(FeatxError, match="incomplete"):
        open_features(partial_path(path))
    assert len(open_features(partial_path(path), allow_incomplete=True)["train"]) == 2


def test_finalize_refuses_missing_items(tmp_path):
    w = _writer(tmp_path / "c.h5").open()
    w.append("train", _rows(2), [0, 1], ["t0", "t1"])
    with pytest.raises(FeatxError, match="2 of 5"):
        w.finalize()
    w.close()
    assert not (tmp_path / "c.h5").exists()


def test_resume_drops_rows_past_n_committed(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path).open()
    w.append("train", _rows(2), [0, 1], ["t0", "t1"])
    w.close()
    # Simulate a kill after rows were written but before n_committed was raised.
    with h5py.File(partial_path(path), "r+") as f:
        g = f["train"]
        for name in ("features", "labels", "ids"):
            g[name].resize(3, axis=0)
        g["features"][2] = 99.0
    w = _writer(path).open()
    assert w.resumed and w.position("train") == 2
    w.append("train", _rows(3, 2), [0, 1, 0], ["t2", "t3", "t4"])
    w.append("test", _rows(2), [0, 1], ["s0", "s1"])
    w.finalize()
    np.testing.assert_array_equal(open_features(path)["train"].X, _rows(5))


def test_partial_of_another_key_is_moved_aside_not_reused(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path, key="old").open()
    w.append("train", _rows(2), [0, 1], ["t0", "t1"])
    w.close()
    w = _writer(path, key="new").open()
    assert not w.resumed and "another cache key" in w.discarded
    assert w.position("train") == 0
    w.close()
    assert (tmp_path / "c.h5.partial.discarded").exists()


def test_damaged_file_is_reported_in_one_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"torn after its signature" * 100)
    with pytest.raises(FeatxError, match="damaged or not a featx cache"):
        open_features(bad)
    other = tmp_path / "notes.h5"
    other.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(FeatxUsageError, match="is not a featx cache: it is a text file"):
        open_features(other)


def test_second_writer_on_the_same_cache_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    first = _writer(path).open()
    first.append("train", _rows(2), [0, 1], ["t0", "t1"])
    with pytest.raises(FeatxError, match="another featx process is writing"):
        _writer(path).open()
    assert partial_path(path).exists(), "the running writer's file is left alone"
    first.append("train", _rows(3, 2), [0, 1, 0], ["t2", "t3", "t4"])
    first.append("test", _rows(2), [0, 1], ["s0", "s1"])
    first.finalize()
    assert len(open_features(path)["train"]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
