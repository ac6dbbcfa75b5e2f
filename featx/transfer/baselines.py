"""Does pretraining help here? The same head on the same items with random-init features and with raw pixels.

The baselines belong to a cache, not to a head fit: :func:`baseline_features` takes a stratified sample of at most
:data:`BASELINE_TRAIN_MAX` labelled train rows and :data:`BASELINE_TEST_MAX` test rows, rebuilds the cache's source
from its record, and computes the sample's random-init features (the same architecture with seeded random weights,
extracted through :mod:`featx.extract` and cached like any extraction) and raw pixels (32x32 RGB). It does this
**once per cache**: the result is stored beside the cache (``<cache>.baselines.npz``, keyed by the cache's key and
the sample's settings) and read back by every later ``featx fit`` and ``featx grid`` on that cache.

:func:`baselines_for` then gives the transfer verdict of :mod:`featx.probe.verdict` from the stored arrays alone:
one head, tuned separately on each of the three feature sets (the cache's pretrained features, the random-init
features, the pixels, which the head standardises), compared with the better baseline on the same test items; the
gain has a 95% interval and the verdict is helps, hurts or inconclusive.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..options import DATASETS_ROOT
from ..util import atomic_write, first_line

__all__ = ["BASELINE_TRAIN_MAX", "BASELINE_TEST_MAX", "STORE_SUFFIX", "store_path", "baseline_features",
           "baselines_for", "run_baselines", "baseline_warning"]

log = logging.getLogger("featx")

#: Most labelled train / test rows the baselines are fitted and scored on (a stratified sample).
BASELINE_TRAIN_MAX = 2000
BASELINE_TEST_MAX = 2000
#: The file beside a cache that holds its baseline features: ``x.h5`` -> ``x.baselines.npz``.
STORE_SUFFIX = ".baselines.npz"
#: Version of the store's layout (a store of another version is computed again; 2: the three feature sets
#: hold the same items in the same order).
STORE_VERSION = 2
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
    "<split>_pixels": uint8 pixels}`` for the train and test splits, row for row (the labels are the cache's
    labels of ``<split>_rows``)."""
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
    for s, r in rows.items():  # the three feature sets on the same items, in the same order (the verdict pairs them)
        by_id = dict(zip(map(str, rand[s].ids), range(len(rand[s]))))
        X, _, pixel_ids = raw_pixels(part, split=s)
        by_pixel = dict(zip(pixel_ids, range(len(pixel_ids))))
        ids = [str(i) for i in fs[s].ids[r]]
        keep = [j for j, i in enumerate(ids) if i in by_id and i in by_pixel]  # unreadable items left out
        arrays[f"{s}_rows"] = np.asarray(r, dtype=np.int64)[keep]
        arrays[f"{s}_random"] = rand[s].X[[by_id[ids[j]] for j in keep]]
        arrays[f"{s}_pixels"] = np.round(X[[by_pixel[ids[j]] for j in keep]] * 255).astype(np.uint8)
    return arrays, result.path


def baselines_for(fs, head_name: str, params: dict, features: dict, *, seed: int = 0) -> dict:
    """Does pretraining help ``head_name`` on cache ``fs``? The protocol of :mod:`featx.probe.verdict` on the
    baseline sample ``features`` (:func:`baseline_features`): pretrained, random-init and raw-pixel features of the
    same items, each with its own tuning; no extraction. ``params``: the head's other parameters."""
    from ..probe.verdict import transfer_verdict

    r = {s: features[f"{s}_rows"] for s in _SPLITS}
    y = {s: fs[s].y[r[s]] for s in _SPLITS}
    sets = {
        "pretrained": (fs["train"].X[r["train"]], y["train"], fs["test"].X[r["test"]], y["test"]),
        "random_init": (features["train_random"], y["train"], features["test_random"], y["test"]),
        "raw_pixels": (features["train_pixels"].astype(np.float32) / 255, y["train"],
                       features["test_pixels"].astype(np.float32) / 255, y["test"]),
    }
    t = transfer_verdict(head_name, params, sets, seed=seed)
    record = {"head": head_name, "n_train": int(len(y["train"])), "n_test": int(len(y["test"])),
              "pretrained": t["top1"]["pretrained"], "random_init": t["top1"]["random_init"],
              "raw_pixels": t["top1"]["raw_pixels"], "transfer": t,
              "random_init_cache": features["meta"]["random_init_cache"], "store": str(store_path(fs.path))}
    record["warning"] = baseline_warning(record)
    return record


def run_baselines(fs, head_name: str, params: dict, **places) -> dict:
    """:func:`baselines_for` on :func:`baseline_features` (computed once per cache; ``places``: ``cache_dir``,
    ``root``, ``device``, ``seed``, ``max_train``, ``max_test``)."""
    return baselines_for(fs, head_name, params, baseline_features(fs, **places), seed=places.get("seed", 0))


def baseline_warning(b: dict) -> str | None:
    """The one-line warning when the pretrained features are worse than a baseline beyond the noise (the
    verdict ``hurts``; ``inconclusive`` is said, not warned)."""
    from ..probe.verdict import verdict_line

    t = b.get("transfer") or {}
    if t.get("verdict") != "hurts":
        return None
    return f"warning: {verdict_line(t)}"
