"""``featx fit --update HEAD CACHE``: a saved streaming head (slda, ncm) learns CACHE's rows and classes."""

from __future__ import annotations

from ..errors import FeatxUsageError
from ..options import METRICS
from .base import check_output, echo, existing_file

__all__ = ["fit_update"]


def fit_update(head_path, cache, pipeline, out, force, *, params=(), templates=None, limit=None,
               retune: bool = False) -> None:
    """Update ``head_path`` with ``cache`` (or the pipeline's cache) and print what changed."""
    from ..heads.persist import card_path
    from ..pipeline import experiment, resolve_cache
    from ..probe.update import incremental_head_name, update_head, updated_head_path

    if params or templates:
        raise FeatxUsageError("--update keeps the head's parameters: --param and --templates are for a new fit")
    existing_file(head_path, "head")
    name = incremental_head_name(head_path)  # a head that cannot be updated is refused before the cache is read
    path = resolve_cache(cache, experiment(pipeline, limit=limit))
    from .multilabel import single_label_only

    single_label_only(path, "featx fit --update")
    target = out or updated_head_path(head_path, path)
    inputs = {"the head": head_path, "the cache": path}
    check_output(target, inputs, replaces=("zip",), force=force)
    check_output(card_path(target), inputs, replaces=("text",), force=force)
    r = update_head(head_path, path, out=target, retune=retune)
    added = f"; new classes: {', '.join(r.new_classes)}" if r.new_classes else "; no new classes"
    echo(f"{name}: updated with {r.rows} rows of {path.name} in {r.seconds:.2f} s ({r.n_classes} classes{added})")
    echo(f"{'split':<6} {'n':>6} " + " ".join(f"{m:>14}" for m in METRICS))
    for split, m in r.metrics.items():
        if m:
            echo(f"{split:<6} {m['n']:>6} " + " ".join(f"{m[k]:>14.4f}" for k in METRICS))
    if r.shrinkage:
        echo(f"shrinkage re-tuned on {r.shrinkage['on']}: {r.shrinkage['from']:g} -> {r.shrinkage['to']:g}")
    cal = r.calibration
    if cal and "temperature" in cal:
        echo(f"calibration: temperature {cal['temperature']:.4g} fitted again on {cal['val_rows']} val rows of "
             f"{path.name}")
    else:
        echo(f"calibration: {cal['skipped'] if cal else 'no labelled val rows'}; featx predict prints the raw scores")
    echo(f"saved {r.head_path} and {r.card_path} (the head it came from is unchanged)")
