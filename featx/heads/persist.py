"""Saving and loading fitted heads with their JSON cards.

A head is saved by :func:`save_head` as ``<name>.joblib`` with a card ``<name>.json`` next to it:
head name, parameters, metrics, the cache and its key, the embedding record that ``featx predict``
needs, and the head file's sha256. :func:`load_head` checks that sha256 before unpickling.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write, file_sha256
from ..version import __version__

__all__ = ["EMBEDDING_META", "card_path", "save_head", "update_card", "load_head"]

#: Cache attributes that determine the embedding (copied into a head's card by ``featx fit``).
EMBEDDING_META = ("backbone", "weights", "weights_sha256", "transform", "layer", "precision", "feature_dim",
                  "memory_format", "decoder")


def card_path(head_path) -> Path:
    """The JSON card saved next to a head: ``x.svm.joblib`` -> ``x.svm.json``."""
    return Path(head_path).with_suffix(".json")


def save_head(head, target, *, head_name: str, params: dict, metrics: dict, fit_seconds: float, n_train: int,
              fs) -> tuple[Path, Path]:
    """Write a fitted head and its card; return both paths. ``fs`` is the cache it was trained on."""
    import joblib

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        joblib.dump(head, tmp)
    card = {
        "head": head_name,
        "params": params,
        "metrics": metrics,
        "fit_seconds": round(fit_seconds, 3),
        "n_train": n_train,
        "cache": str(fs.path),
        "cache_key": fs.cache_key,
        "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"),
        "classes": list(fs.classes),
        "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "head_file": target.name,
        "head_sha256": file_sha256(target),
        # what `featx predict` / `export-model` need to embed new images the same way
        "embedding": {k: fs.meta.get(k) for k in EMBEDDING_META if k in fs.meta},
    }
    card_file = card_path(target)
    with atomic_write(card_file) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return target, card_file


def update_card(card_file, **fields) -> None:
    """Add fields to a saved card (the head's sha256 covers the head file, not the card)."""
    card_file = Path(card_file)
    card = json.loads(card_file.read_text(encoding="utf-8"))
    card.update(fields)
    with atomic_write(card_file) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def load_head(path, *, trust: bool = False):
    """Load a head saved by ``featx fit``, and its card.

    A head is a joblib pickle, and unpickling runs code: it is loaded only when its sha256 equals
    the one ``featx fit`` recorded in its card (``<name>.json``), unless ``trust`` is set (for a
    file you made yourself). Returns ``(estimator, card)``.
    """
    import joblib

    if not Path(path).exists():
        raise FeatxUsageError(f"head {path} does not exist")
    cp = card_path(path)
    try:
        card = json.loads(cp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        card = None
    except (OSError, ValueError) as exc:
        raise FeatxError(f"head card {cp} cannot be read ({exc})") from None
    if not trust:
        if card is None:
            raise FeatxError(f"head {path} has no card {cp.name} to check it against; a head file runs code "
                             "when loaded: pass --trust only if you made it yourself")
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise FeatxError(f"head {path} cannot be read ({exc.strerror or exc})") from None
        if actual != card.get("head_sha256"):
            raise FeatxError(f"head {path} does not match its card (sha256 {actual[:12]}..., card says "
                             f"{str(card.get('head_sha256'))[:12]}...): it was changed after `featx fit`; a head "
                             "file runs code when loaded, so it is not loaded (--trust overrides)")
    try:
        est = joblib.load(path)
    except FileNotFoundError:
        raise FeatxUsageError(f"head {path} does not exist") from None
    except Exception as exc:  # a damaged or foreign pickle can raise anything
        raise FeatxError(f"head {path} cannot be loaded ({type(exc).__name__}: {exc})") from None
    return est, card or {}
