"""An approximate-neighbour index kept beside a cache (``featx index``), built with FAISS (the ``index`` extra).

The index holds every row of the cache (its splits in order, numbered as :func:`featx.inference.nearest` numbers
them), L2-normalised, searched by inner product = cosine. Its kind follows the size unless asked:

- ``flat`` (exact) below :data:`HNSW_MIN_ROWS` rows: the exact scan is already fast there;
- ``hnsw`` (graph, ``M = 32``) up to :data:`IVF_MIN_ROWS` rows;
- ``ivf`` (inverted lists, ``sqrt(n)`` lists, k-means trained on :data:`IVF_TRAIN_PER_LIST` rows per list) above:
  its build time grows more slowly with the rows than a graph's.

The search depth (HNSW's ``efSearch``, IVF's ``nprobe``) is the smallest of a ladder whose recall@10 against the
exact search reaches :data:`TARGET_RECALL` on :data:`RECALL_QUERIES` rows of the cache used as queries; the recall
and the query speed of both searches are measured and recorded (``<cache>.faiss.json``). A FAISS index file holds
numbers only (no pickle): reading it runs no code. ``featx neighbors`` uses the index when it belongs to the cache
(same key and rows).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..util import atomic_write, l2_normalise
from .index import cosine_top_k, numbered_blocks

__all__ = ["INDEX_KINDS", "build_index", "index_path", "kept_index", "search"]

#: ``featx index --kind``: what each is.
INDEX_KINDS = {"auto": "chosen by the number of rows", "flat": "exact inner product (FAISS IndexFlatIP)",
               "hnsw": "HNSW graph, M = 32", "ivf": "inverted lists, sqrt(n) lists, flat vectors"}
#: Below this many rows the index is exact (``flat``): a scan of them takes milliseconds.
HNSW_MIN_ROWS = 20_000
#: From this many rows, inverted lists (``ivf``) instead of a graph.
IVF_MIN_ROWS = 2_000_000
#: The recall@10 the search depth is raised to reach, against the exact search.
TARGET_RECALL = 0.95
#: Rows of the cache searched to measure recall and speed.
RECALL_QUERIES = 500
#: Search depths tried, smallest first (HNSW efSearch; IVF nprobe).
DEPTHS = {"hnsw": (16, 32, 64, 128, 256, 512, 1024), "ivf": (8, 16, 32, 64, 128, 256, 512)}
#: Rows per inverted list the IVF's k-means trains on (FAISS asks for 30 to 256).
IVF_TRAIN_PER_LIST = 32
#: Rows added to the index at a time (a cache larger than memory is read block by block).
ADD_BLOCK = 65_536


def _faiss():
    try:
        import faiss
    except ImportError:
        raise FeatxError("featx index needs FAISS: pip install 'featx[index]' (make install does)") from None
    return faiss


def index_path(cache) -> Path:
    """``<cache>.faiss``; its record is ``<cache>.faiss.json``."""
    return Path(f"{cache}.faiss")


def _sample_queries(fs, n: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded rows of the cache (numbered as :func:`~featx.cache.index.numbered_blocks`), L2-normalised;
    each split's picks read in one call."""
    total = sum(len(fs[s]) for s in fs.splits)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    rows, start = [], 0
    for split in fs.splits:
        m = len(fs[split])
        mine = picks[(picks >= start) & (picks < start + m)] - start
        if len(mine):
            rows.append(fs[split][mine])
        start += m
    return l2_normalise(np.concatenate(rows)).astype(np.float32)


def build_index(fs, kind: str = "auto", *, k: int = 10) -> dict:
    """Build, tune and save the index of cache ``fs`` beside it; returns its record."""
    faiss = _faiss()
    n, d = sum(len(fs[s]) for s in fs.splits), int(fs.feature_dim)
    if kind == "auto":
        kind = "flat" if n < HNSW_MIN_ROWS else ("hnsw" if n < IVF_MIN_ROWS else "ivf")
    t0 = time.perf_counter()
    params: dict = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        params = {"M": 32, "efConstruction": 80}
    elif kind == "ivf":
        nlist = max(1, int(math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_sample_queries(fs, min(n, IVF_TRAIN_PER_LIST * nlist), seed=1))
        params = {"nlist": nlist}
    else:
        raise FeatxError(f"unknown index kind {kind!r} ({', '.join(INDEX_KINDS)})", param="kind")
    for _, rows in numbered_blocks(fs, block=ADD_BLOCK):
        index.add(l2_normalise(rows).astype(np.float32))
    build_s = time.perf_counter() - t0
    queries = _sample_queries(fs, RECALL_QUERIES)
    kk = min(k, n)
    t0 = time.perf_counter()
    truth = cosine_top_k(queries, numbered_blocks(fs, block=ADD_BLOCK), kk)[1]
    exact_ms = (time.perf_counter() - t0) * 1000 / len(queries)
    depth, recall, index_ms = _tune(index, kind, queries, truth, kk)
    if depth is not None:
        params["efSearch" if kind == "hnsw" else "nprobe"] = depth
    record = {"kind": kind, "params": params, "rows": n, "dim": d, "cache_key": fs.cache_key,
              "splits": list(fs.splits), f"recall_at_{kk}": round(recall, 4), "recall_queries": len(queries),
              "build_seconds": round(build_s, 2), "exact_ms_per_query": round(exact_ms, 3),
              "index_ms_per_query": round(index_ms, 3), "speedup": round(exact_ms / max(index_ms, 1e-9), 1)}
    target = index_path(fs.path)
    with atomic_write(target, suffix=".tmp.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_write(Path(f"{target}.json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _tune(index, kind: str, queries: np.ndarray, truth: np.ndarray, k: int) -> tuple[int | None, float, float]:
    """The smallest search depth reaching :data:`TARGET_RECALL` (else the deepest tried), its recall@k and
    milliseconds per query (queries searched as one batch)."""
    depths = DEPTHS.get(kind, (None,))
    for depth in depths:
        _set_depth(index, kind, depth)
        t0 = time.perf_counter()
        _, found = index.search(queries, k)
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
        if recall >= TARGET_RECALL or depth == depths[-1]:
            return depth, recall, ms
    raise AssertionError("unreachable")


def _set_depth(index, kind: str, depth) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = int(depth)
    elif kind == "ivf":
        index.nprobe = int(depth)


def kept_index(fs):
    """``(index, record)`` of the index kept beside cache ``fs`` when it belongs to it (same key, same rows), else
    ``None``: an index of an older state of the cache is never used."""
    target = index_path(fs.path)
    record_file = Path(f"{target}.json")
    if not (target.is_file() and record_file.is_file()):
        return None
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows = sum(len(fs[s]) for s in fs.splits)
    if record.get("cache_key") != fs.cache_key or record.get("rows") != rows or record.get("splits") != list(fs.splits):
        return None
    faiss = _faiss()
    index = faiss.read_index(str(target))
    if index.ntotal != rows or index.d != fs.feature_dim:
        return None
    _set_depth(index, record["kind"], (record.get("params") or {}).get("efSearch" if record["kind"] == "hnsw"
                                                                         else "nprobe"))
    return index, record


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cosine similarities, row numbers)`` of the ``k`` nearest rows of each query, best first."""
    sims, idx = index.search(l2_normalise(queries).astype(np.float32), k)
    return sims, idx.astype(np.int64)
