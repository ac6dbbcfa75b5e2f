"""`featx index`: an approximate-neighbour index kept beside a cache, its recall measured against the exact search,
used by `featx neighbors` only while it belongs to the cache (issue 28)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from featx import open_features
from featx.cache.writer import FeatureWriter
from featx.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss not installed")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def synthetic_cache(path, n_train=24_000, n_test=2_000, d=32, k=40, seed=0, key="k1"):
    """Clustered rows (``k`` classes around random centres), the shape of real embeddings' neighbourhoods."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, k, n)
        splits[split] = ((centres[y] + 0.6 * rng.normal(size=(n, d))).astype(np.float32), y)
    attrs = {"cache_key": key, "backbone": "synthetic", "weights": "none", "weights_sha256": "",
             "layer": "penultimate", "transform": {"input_size": [3, 8, 8]}, "source": {"kind": "test"},
             "precision": "fp32", "decoder": "pil"}
    with FeatureWriter(path, attrs=attrs, classes=[f"c{i}" for i in range(k)],
                       split_sizes={s: len(y) for s, (X, y) in splits.items()}, feature_dim=d) as w:
        for s, (X, y) in splits.items():
            w.append(s, X, y, [f"{s}/{i}" for i in range(len(y))])
        w.finalize()
    return path


def test_an_hnsw_index_reaches_its_recall_and_neighbors_use_it(tmp_path, caplog):
    from featx.inference import nearest

    cache = synthetic_cache(tmp_path / "c.h5")
    out = run("index", cache)
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "c.h5.faiss.json").read_text())
    assert record["kind"] == "hnsw" and record["rows"] == 26_000  # auto: a graph from 20,000 rows
    assert record["recall_at_10"] >= 0.95 and "recall@10" in out.output
    fs = open_features(cache)
    queries = fs["test"].X[:50] + 0.01
    caplog.set_level("INFO", logger="featx")
    approx = nearest(fs, queries, 10)
    assert "searching the hnsw index" in caplog.text
    exact = nearest(fs, queries, 10, use_index=False)
    overlap = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(approx, exact)])
    assert overlap >= 0.9
    assert [a[0].id for a in approx] == [b[0].id for b in exact] or overlap >= 0.95


def test_an_index_of_another_state_of_the_cache_is_not_used(tmp_path, caplog):
    from featx.inference import nearest

    cache = synthetic_cache(tmp_path / "c.h5", n_train=3_000, n_test=500)
    assert run("index", cache, "--kind", "flat").exit_code == 0
    synthetic_cache(tmp_path / "c.h5", n_train=3_000, n_test=400, key="k2")  # the cache rewritten since
    caplog.set_level("INFO", logger="featx")
    fs = open_features(cache)
    hits = nearest(fs, fs["test"].X[:3], 5)
    assert "another state of this cache: not used" in caplog.text
    assert [h[0].id for h in hits] == [f"test/{i}" for i in range(3)]  # each row finds itself, exactly
    again = run("index", cache)  # a second run replaces its own index (same kinds of file)
    assert again.exit_code == 0, again.output


def test_index_never_overwrites_what_is_not_an_index(tmp_path):
    cache = synthetic_cache(tmp_path / "c.h5", n_train=500, n_test=100)
    (tmp_path / "c.h5.faiss.json").write_bytes(b"\x89PNG\r\n\x1a\n not a record")
    out = run("index", cache)
    assert out.exit_code == 2 and (tmp_path / "c.h5.faiss.json").read_bytes().startswith(b"\x89PNG")
