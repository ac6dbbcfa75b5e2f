"""Does pretraining help here? The same head on the same items with random-init features and with raw pixels.

For a cache and a head, :func:`run_baselines` takes a stratified sample of at most
:data:`BASELINE_TRAIN_MAX` labelled train rows and :data:`BASELINE_TEST_MAX` test rows, rebuilds the cache's
source from its record, and fits the head three times on the same rows: on the cache's (pretrained) features,
on features of the same architecture with seeded random weights (extracted and cached like any extraction, so
the next run reuses them), and on raw pixels (32x32 RGB, flattened; the head standardises them). The transfer
gain is the pretrained test accuracy minus the best baseline's, with its standard error from the test size;
at or below zero the pretrained features do no better than no pretraining.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import FeatxError
from ..util import first_line
from .estimators import gain_se

__all__ = ["BASELINE_TRAIN_MAX", "BASELINE_TEST_MAX", "run_baselines", "source_from_record", "baseline_warning"]

log = logging.getLogger("featx")

#: Most labelled train / test rows the baselines are fitted and scored on (a stratified sample).
BASELINE_TRAIN_MAX = 2000
BASELINE_TEST_MAX = 2000


def source_from_record(record: dict, *, root: str = "cache/datasets"):
    """The source a cache records (``meta["source"]``), rebuilt from where it was; ``root`` is where
    torchvision datasets are kept (the record does not hold it)."""
    from ..data.sources import make_source

    kind = record.get("kind")
    data = {"torchvision": f"torchvision:{record.get('dataset')}", "imagefolder": record.get("root"),
            "manifest": record.get("manifest"), "stanford_dogs": record.get("root")}.get(kind)
    if not data or data.endswith(":None"):
        raise FeatxError(f"the cache's source ({kind}) cannot be rebuilt from its record")
    return make_source(data, root=root, val_fraction=record.get("val_fraction", 0.1),
                       test_fraction=record.get("test_fraction", 0.1), seed=record.get("seed", 0),
                       limit=record.get("limit", 0))


def _top1(head_name: str, params: dict, Xtr, ytr, Xte, yte) -> float:
    from ..heads.registry import make_head
    from ..probe.fitting import fit_quietly

    head = fit_quietly(head_name, make_head(head_name, params), Xtr, ytr)
    return float(np.mean(head.predict(Xte) == yte))


def run_baselines(fs, head_name: str, params: dict, *, cache_dir="cache", root: str = "cache/datasets",
                  device: str = "cpu", seed: int = 0, max_train: int = BASELINE_TRAIN_MAX,
                  max_test: int = BASELINE_TEST_MAX) -> dict:
    """Pretrained vs random-init vs raw-pixel test accuracy of ``head_name`` (with ``params``) on one sample of
    ``fs``; see the module docstring. Raises :class:`FeatxError` when the source cannot be read here."""
    from ..backbones.registry import load_backbone
    from ..cache.store import open_features
    from ..data.sources import stratified_sample
    from ..extract import extract
    from .rank import raw_pixels

    if "train" not in fs or "test" not in fs:
        raise FeatxError("baselines need a train and a test split")
    train, test = fs["train"], fs["test"]
    rows = {"train": stratified_sample(train.y, max_train, seed), "test": stratified_sample(test.y, max_test, seed)}
    source = source_from_record(fs.meta.get("source") or {}, root=root)
    try:
        part = source.restricted({s: [str(i) for i in fs[s].ids[r]] for s, r in rows.items()},
                                 record={"baseline_sample": {"seed": seed, "train": len(rows["train"]),
                                                             "test": len(rows["test"])}})
    except KeyError as exc:
        raise FeatxError(f"the source has changed since the cache was made ({first_line(exc)} is gone)") from None
    y = {s: fs[s].y[r] for s, r in rows.items()}
    pretrained = _top1(head_name, params, train.X[rows["train"]], y["train"], test.X[rows["test"]], y["test"])
    layer = fs.meta.get("layer")
    bb = load_backbone(fs.meta["backbone"], "none", device=device,
                       layer=None if layer in (None, "", "penultimate") else layer)
    result = extract(part, bb, cache_dir=cache_dir, device=device, progress=None)
    rand = open_features(result.path)
    by_id = {s: dict(zip(map(str, rand[s].ids), range(len(rand[s])))) for s in rows}
    Xr = {s: rand[s].X[[by_id[s][str(i)] for i in fs[s].ids[r] if str(i) in by_id[s]]] for s, r in rows.items()}
    yr = {s: np.asarray([fs[s].y[j] for j in r if str(fs[s].ids[j]) in by_id[s]]) for s, r in rows.items()}
    random_init = _top1(head_name, params, Xr["train"], yr["train"], Xr["test"], yr["test"])
    Xp, yp = raw_pixels(part, split="train")
    Xpt, ypt = raw_pixels(part, split="test")
    pixels = _top1(head_name, params, Xp, yp, Xpt, ypt)
    best = max(random_init, pixels)
    n_test = len(y["test"])
    se = gain_se(pretrained, best, n_test)
    return {"head": head_name, "n_train": int(len(y["train"])), "n_test": int(n_test), "pretrained": pretrained,
            "random_init": random_init, "raw_pixels": pixels, "transfer_gain": round(pretrained - best, 4),
            "transfer_gain_se": round(se, 4), "negative_transfer": bool(pretrained - best <= 0),
            "random_init_cache": str(result.path)}


def baseline_warning(b: dict) -> str | None:
    """The one-line warning when the pretrained features do no better than a baseline."""
    if not b.get("negative_transfer"):
        return None
    return (f"warning: these pretrained features do no better than random-init / raw pixels on this data "
            f"({b['head']} test top-1 on {b['n_test']} items: pretrained {b['pretrained']:.4f}, random-init "
            f"{b['random_init']:.4f}, raw pixels {b['raw_pixels']:.4f})")
