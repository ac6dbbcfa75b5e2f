"""Does pretraining help here? The same head on the same items with random-init features and with raw pixels.

The baselines belong to a cache, not to a head fit: :func:`baseline_features` takes a stratified sample of at most
:data:`BASELINE_TRAIN_MAX` labelled train rows and :data:`BASELINE_TEST_MAX` test rows, rebuilds the cache's source
from its record, and computes the sample's random-init features (the same architecture with seeded random weights,
extracted through :mod:`featx.extract` and cached like any extraction) and raw pixels (32x32 RGB). It does this
**once per cache**: the result is stored beside the cache (``<cache>.baselines.npz``, keyed by the cache's key and
the sample's settings) and read back by every later ``featx fit`` and ``featx grid`` on that cache.

:func:`baselines_for` then fits one head three times on the same rows -- on the cache's (pretrained) features, on
the random-init features and on the pixels (the head standardises them) -- from the stored arrays alone. The
transfer gain is the pretrained test accuracy minus the best baseline's, with its standard error from the test size;
at or below zero the pretrained features do no better than no pretraining.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..options import DATASETS_ROOT
from ..util import atomic_write, first_line
from .estimators import gain_se

__all__ = ["BASELINE_TRAIN_MAX", "BASELINE_TEST_MAX", "STORE_SUFFIX", "store_path", "baseline_features",
           "baselines_for", "run_baselines", "baseline_warning"]

log = logging.getLogger("featx")

#: Most labelled train / test rows the baselines are fitted and scored on (a stratified sample).
BASELINE_TRAIN_MAX = 2000
BASELINE_TEST_MAX = 2000
#: The file beside a cache that holds its baseline features: ``x.h5`` -> ``x.baselines.npz``.
STORE_SUFFIX = ".baselines.npz"
#: Version of the store's layout (a store of another version is computed again).
STORE_VERSION = 1
_SPLITS = ("train", "test")


def store_path(cache) -> Path:
    """Where a cache's baseline features are stored."""
    cache = Path(cache)
    return cache.with_name(cache.stem + STORE_SUFFIX)


def _top1(head_name: str, params: dict, Xtr, ytr, Xte, yte) -> float:
    from ..heads.registry import make_head
    from ..probe.fitting import fit_quietly

    head = fit_quietly(head_name, make_head(head_name, params), Xtr, ytr)
    return float(np.mean(head.predict(Xte) == yte))


def _load(path: Path, settings: dict) -> dict | None:
    """The stored arrays when ``path`` holds a store made with ``settings``; ``None`` otherwise (missing, another
    cache, another sample, damaged: then it is computed again). Never unpickles (``allow_pickle=False``)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
        meta = json.loads(str(stored.pop("meta")))
    except Exception:  # a damaged or foreign file: made again
        return None
    if {k: meta.get(k) for k in settings} != settings:
        return None
    return {"meta": meta, **stored}


def baseline_features(fs, *, cache_dir="cache", root: str = DATASETS_ROOT, device: str = "cpu", seed: int = 0,
                      max_train: int = BASELINE_TRAIN_MAX, max_test: int = BASELINE_TEST_MAX) -> dict:
    """The baseline sample of cache ``fs`` and its random-init and raw-pixel features, stored beside the cache
    (:func:`store_path`) the first time and read from there afterwards. Raises :class:`FeatxError` when the source
    cannot be read here.

    Returns ``{"meta": {...}, "<split>_rows": rows of the cache's split, "<split>_random": features,
    "<split>_random_y", "<split>_pixels": uint8 pixels, "<split>_pixels_y"}`` for the train and test splits."""
    if "train" not in fs or "test" not in fs:
        raise FeatxError("baselines need a train and a test split")
    settings = {"version": STORE_VERSION, "cache_key": fs.cache_key, "seed": seed, "max_train": max_train,
                "max_test": max_test}
    path = store_path(fs.path)
    stored = _load(path, settings)
    if stored is not None:
        return stored
    arrays, random_cache = _compute(fs, cache_dir=cache_dir, root=root, device=device, seed=seed,
                                    sizes={"train": max_train, "test": max_test})
    meta = {**settings, "random_init_cache": str(random_cache)}
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
    log.info(f"baseline features of {fs.path.name} stored in {path} (reused by later fits and grids)")
    return {"meta": meta, **arrays}


def _compute(fs, *, cache_dir, root: str, device: str, seed: int, sizes: dict) -> tuple[dict, Path]:
    """The sample's rows, random-init features (one extraction) and raw pixels; unreadable items left out."""
    from ..backbones.registry import load_backbone
    from ..cache.spec import EmbeddingSpec
    from ..cache.store import open_features
    from ..data.layout import source_from_record
    from ..data.sources import stratified_sample
    from ..extract import extract
    from .rank import raw_pixels

    rows = {s: stratified_sample(fs[s].y, sizes[s], seed) for s in _SPLITS}
    source = source_from_record(fs.meta.get("source") or {}, root=root)
    try:
        part = source.restricted({s: [str(i) for i in fs[s].ids[r]] for s, r in rows.items()},
                                 record={"baseline_sample": {"seed": seed, "train": len(rows["train"]),
                                                             "test": len(rows["test"])}})
    except KeyError as exc:
        raise FeatxError(f"the source has changed since the cache was made ({first_line(exc)} is gone)") from None
    spec = EmbeddingSpec.from_attrs(fs.meta)
    bb = load_backbone(spec.backbone, "none", device=device, layer=spec.layer)
    result = extract(part, bb, cache_dir=cache_dir, device=device, progress=None)
    if not result.reused:
        log.info(f"baselines: random-init {spec.backbone} features of the {sum(len(r) for r in rows.values())} "
                 f"sampled items written to {result.path}")
    rand = open_features(result.path)
    arrays = {}
    for s, r in rows.items():
        by_id = dict(zip(map(str, rand[s].ids), range(len(rand[s]))))
        ids = [str(i) for i in fs[s].ids[r]]
        arrays[f"{s}_rows"] = np.asarray(r, dtype=np.int64)
        arrays[f"{s}_random"] = rand[s].X[[by_id[i] for i in ids if i in by_id]]
        arrays[f"{s}_random_y"] = np.asarray([y for i, y in zip(ids, fs[s].y[r]) if i in by_id], dtype=np.int64)
        X, y = raw_pixels(part, split=s)
        arrays[f"{s}_pixels"] = np.round(X * 255).astype(np.uint8)
        arrays[f"{s}_pixels_y"] = y.astype(np.int64)
    return arrays, result.path


def baselines_for(fs, head_name: str, params: dict, features: dict) -> dict:
    """Pretrained vs random-init vs raw-pixel test accuracy of ``head_name`` (with ``params``) on the baseline
    sample ``features`` (:func:`baseline_features`) of cache ``fs``: three fits, no extraction."""
    r = {s: features[f"{s}_rows"] for s in _SPLITS}
    y = {s: fs[s].y[r[s]] for s in _SPLITS}
    pretrained = _top1(head_name, params, fs["train"].X[r["train"]], y["train"], fs["test"].X[r["test"]], y["test"])
    random_init = _top1(head_name, params, features["train_random"], features["train_random_y"],
                        features["test_random"], features["test_random_y"])
    pixels = _top1(head_name, params, features["train_pixels"].astype(np.float32) / 255, features["train_pixels_y"],
                   features["test_pixels"].astype(np.float32) / 255, features["test_pixels_y"])
    best = max(random_init, pixels)
    n_test = len(y["test"])
    se = gain_se(pretrained, best, n_test)
    record = {"head": head_name, "n_train": int(len(y["train"])), "n_test": int(n_test), "pretrained": pretrained,
              "random_init": random_init, "raw_pixels": pixels, "transfer_gain": round(pretrained - best, 4),
              "transfer_gain_se": round(se, 4), "negative_transfer": bool(pretrained - best <= 0),
              "random_init_cache": features["meta"]["random_init_cache"], "store": str(store_path(fs.path))}
    record["warning"] = baseline_warning(record)
    return record


def run_baselines(fs, head_name: str, params: dict, **places) -> dict:
    """:func:`baselines_for` on :func:`baseline_features` (computed once per cache; ``places``: ``cache_dir``,
    ``root``, ``device``, ``seed``, ``max_train``, ``max_test``)."""
    return baselines_for(fs, head_name, params, baseline_features(fs, **places))


def baseline_warning(b: dict) -> str | None:
    """The one-line warning when the pretrained features do no better than a baseline."""
    if not b.get("negative_transfer"):
        return None
    return (f"warning: these pretrained features do no better than random-init / raw pixels on this data "
            f"({b['head']} test top-1 on {b['n_test']} items: pretrained {b['pretrained']:.4f}, random-init "
            f"{b['random_init']:.4f}, raw pixels {b['raw_pixels']:.4f})")
