"""The transfer baselines of ``featx fit`` and ``featx grid``: random-init and raw-pixel features of the same items,
found or cached beside the cache, and the transfer verdict printed and added to the head's card."""

from __future__ import annotations

from pathlib import Path

from ..errors import FeatxError
from ..options import DATASETS_ROOT
from .base import echo

__all__ = ["baseline_places", "fit_baselines", "grid_baselines"]


def baseline_places(path: Path, exp, fs=None) -> dict:
    """Where baseline features are cached and torchvision datasets found: the pipeline's folders, or beside a
    cache named on the command line (its cache folder when it has featx's default name,
    ``<cache-dir>/<dataset>/<backbone>-<key>.h5``)."""
    from ..cache.store import open_features

    if exp is not None:
        return {"cache_dir": exp.extract.cache_dir, "root": exp.source.root}
    fs = fs or open_features(path)
    default_name = path.name == f"{fs.meta.get('backbone')}-{fs.cache_key}.h5"
    return {"cache_dir": path.parent.parent if default_name else path.parent, "root": DATASETS_ROOT}


def grid_baselines(path: Path, exp):
    """``baselines(head, params)`` for ``featx grid``: the transfer family's baselines of this cache."""
    from ..cache.store import open_features
    from ..transfer.baselines import run_baselines

    fs = open_features(path)
    places = baseline_places(path, exp, fs)
    return lambda head, params: run_baselines(fs, head, params, **places)


def fit_baselines(head_name: str, params: dict, path: Path, exp, card_file) -> None:
    """Random-init and raw-pixel baselines of a fitted head, printed and added to its card."""
    from ..cache.store import open_features
    from ..heads.persist import update_card
    from ..transfer.baselines import run_baselines

    try:
        fs = open_features(path)
        b = run_baselines(fs, head_name, params, **baseline_places(path, exp, fs))
    except FeatxError as exc:
        echo(f"featx: note: baselines skipped: {exc}", err=True)
        update_card(card_file, baselines={"skipped": str(exc)})
        return
    from ..probe.verdict import verdict_line

    echo(f"baselines ({b['n_train']} train / {b['n_test']} test items, {head_name} tuned on each feature set): "
         f"pretrained {b['pretrained']:.4f}, random-init {b['random_init']:.4f}, raw pixels {b['raw_pixels']:.4f}")
    echo(verdict_line(b["transfer"]))
    if b["warning"]:
        echo(f"featx: {b['warning']}", err=True)
    update_card(card_file, baselines=b, transfer=b["transfer"])
