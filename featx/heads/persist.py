"""Saving and loading fitted heads with their cards.

A head is saved by :func:`save_head` as ``<name>.skops`` with its card inside (the zip entry
:data:`CARD_ENTRY`: head name, parameters, metrics, the cache and its key, the classes, the calibration, the
embedding record that ``featx predict`` needs) -- one file, one rename -- and a copy of the card beside it
(``<name>.json``, with the head file's sha256 and fields that change no prediction, such as the baselines).
:func:`load_head` checks the zip's directory first (:func:`check_archive`: no decompression bomb), takes every
field that changes a prediction (:data:`PREDICTION_FIELDS`) from the card inside, and checks the card against the
head (:func:`check_card`). Heads of an earlier featx (no card inside) must match the sha256 in the card beside them.

The head file is in skops' format (a zip of JSON and ``.npy`` arrays, https://skops.readthedocs.io):
loading it builds only the types it is allowed to -- scikit-learn's estimators, numpy arrays and the
featx classes in :data:`TRUSTED_TYPES` -- and never unpickles, so a shared head cannot run code.
:func:`load_head` recognises the format by the file's content, not its name: a pickle (the joblib heads
featx wrote before, or any other pickle) is loaded only with ``trust=True``, since unpickling runs code.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path

from ..cache.spec import EmbeddingSpec
from ..errors import FeatxError, FeatxUsageError
from ..util import FILE_KINDS, atomic_write, file_kind, file_sha256, first_line
from ..version import __version__

__all__ = ["HEAD_SUFFIX", "TRUSTED_TYPES", "card_path", "default_head_path", "read_card", "save_head",
           "update_card", "load_head", "check_archive", "check_card", "CARD_ENTRY",
           "PREDICTION_FIELDS"]

log = logging.getLogger("featx")

#: The default head file suffix: skops' format.
HEAD_SUFFIX = ".skops"
#: Types a head file may hold beyond those skops trusts itself (scikit-learn's estimators, numpy): featx's
#: own estimators and domain maps (featx adapt). The skada adapters those maps wrap are trusted too
#: (:func:`trusted_types`). Anything else in a head file is refused unless the caller passes ``trust=True``.
TRUSTED_TYPES = ("featx.heads.solvers.LBFGSLinearClassifier", "featx.heads.solvers.TorchLinearClassifier",
                 "featx.heads.zeroshot.ZeroShotClassifier",
                 "featx.heads.incremental.StreamingLDA", "featx.heads.incremental.NearestClassMean",
                 # scikit-learn's stand-in for a label constant in training in a one-vs-rest (multi-label) head: its
                 # only state is that constant (skops does not list scikit-learn's private classes as trusted)
                 "sklearn.multiclass._ConstantPredictor",
                 "featx.heads.layers.LayerColumns",
                 "featx.adapt.maps.AdaptedHead", "featx.adapt.maps.CoralMap", "featx.adapt.maps.DomainStandardizer",
                 "featx.adapt.maps.IdentityMap", "featx.adapt.maps.SkadaMap")
_ZIP_MAGIC = b"PK\x03\x04"


def trusted_types() -> tuple[str, ...]:
    """:data:`TRUSTED_TYPES` and the names skops records for skada's adapters (derived from skada's public classes)."""
    from ..compat import skada_trusted_types

    return TRUSTED_TYPES + skada_trusted_types()


def card_path(head_path) -> Path:
    """The JSON card saved next to a head: ``x.svm.skops`` -> ``x.svm.json``."""
    return Path(head_path).with_suffix(".json")


def default_head_path(cache, head_name: str) -> Path:
    """Where ``featx fit`` saves a head by default: ``<cache>.<head>.skops`` next to the cache."""
    cache = Path(cache)
    return cache.with_name(f"{cache.stem}.{head_name}{HEAD_SUFFIX}")


def _skops():
    try:
        import skops.io
    except ImportError:
        return None
    return skops.io


#: The zip entry of a head file that holds its card: head and card are one file, replaced in one rename. The JSON
#: beside the head is a copy for people and tools (plus fields that change no prediction, such as the baselines).
CARD_ENTRY = "featx-card.json"
#: Card fields that change a prediction: taken from the card inside the head, never from the copy beside it.
PREDICTION_FIELDS = ("head", "classes", "calibration", "embedding", "cache_key", "adaptation", "multilabel")


def save_head(head, target, *, head_name: str, params: dict, metrics: dict, fit_seconds: float, n_train: int,
              fs, extra: dict | None = None) -> tuple[Path, Path]:
    """Write a fitted head (skops' format, its card inside) and the card's copy beside it; return both paths.
    ``fs`` is the cache it was trained on; ``extra`` adds card fields (the calibration, an adaptation) so that
    everything that changes a prediction is saved with the head at once. Without skops installed the head is
    pickled with joblib, with a one-line warning: such a file loads only with ``trust=True``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sio = _skops()
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
        "head_format": "skops" if sio is not None else "joblib",
        # what `featx predict` / `export-model` need to embed new images the same way
        "embedding": {**EmbeddingSpec.from_attrs(fs.meta).to_attrs(),
                      **({"weights_file": fs.meta["weights_file"]} if fs.meta.get("weights_file") else {})},
        **(extra or {}),
    }
    with atomic_write(target) as tmp:
        if sio is not None:
            import zipfile

            sio.dump(head, tmp)
            with zipfile.ZipFile(tmp, "a", zipfile.ZIP_DEFLATED) as z:
                z.writestr(CARD_ENTRY, json.dumps(card, indent=2))
        else:
            import joblib

            log.warning("warning: skops is not installed (pip install 'featx[safe]'): the head is saved as a "
                        "pickle, which featx loads only with --trust")
            joblib.dump(head, tmp)
    card["head_sha256"] = file_sha256(target)
    card_file = card_path(target)
    with atomic_write(card_file) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return target, card_file


def update_card(card_file, **fields) -> None:
    """Add fields that change no prediction (the baselines) to the card beside a head; what changes a prediction
    is saved inside the head by :func:`save_head`."""
    changing = sorted(set(fields) & set(PREDICTION_FIELDS))
    if changing:
        raise ValueError(f"{', '.join(changing)} change(s) predictions: save them with the head (save_head(extra=...))")
    card_file = Path(card_file)
    card = json.loads(card_file.read_text(encoding="utf-8"))
    card.update(fields)
    with atomic_write(card_file) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


#: The most a head file's entries may inflate to, relative to their compressed size, once above
#: :data:`RATIO_FLOOR` bytes. skops stores its entries uncompressed (ratio 1.0 in every head featx wrote in the tests
#: and on Fashion-MNIST); 100x leaves room for a writer that deflates float arrays (they compress little), while a
#: decompression bomb (long runs of one byte) inflates 1000x and more (the 2.9 GB one measured: 1,029x).
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
#: The most entries a head file may hold (a head has tens).
MAX_ENTRIES = 10_000


def head_budget(card: dict | None) -> int | None:
    """The most bytes a head of its card's shape can need once inflated: every training row and a few thousand more
    rows of the feature dimension, in float64, twice over (a k-NN head keeps its training rows), plus 64 MiB;
    ``None`` without a card that says the shape."""
    if not isinstance(card, dict) or not isinstance(card.get("embedding"), dict):
        return None
    try:
        rows = int(card.get("n_train") or 0) + 4096
        dim = int(card["embedding"].get("feature_dim") or 0) + 16
    except (TypeError, ValueError):
        return None
    return 2 * rows * dim * 8 + (64 << 20) if dim > 16 else None


def check_archive(path, card: dict | None = None) -> None:
    """Refuse a head file whose zip directory says it inflates to more than a head needs (:func:`head_budget`),
    or an entry that inflates more than :data:`MAX_RATIO` times: read from the directory alone, before anything
    is decompressed (zipfile stops an entry at its declared size)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FeatxError(f"head {path} is not a readable skops file ({first_line(exc)})") from None
    if len(infos) > MAX_ENTRIES:
        raise FeatxError(f"head {path} holds {len(infos)} entries, more than a head has: not loaded")
    for info in infos:
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise FeatxError(f"head {path}: entry {info.filename!r} inflates {info.compress_size} bytes to "
                             f"{info.file_size} (over {MAX_RATIO}x: a decompression bomb?): not loaded")
    total, budget = sum(i.file_size for i in infos), head_budget(card)
    if budget is not None and total > budget:
        raise FeatxError(f"head {path} inflates to {total} bytes, more than a head of {card.get('n_train')} rows x "
                         f"{card['embedding'].get('feature_dim')} features can need ({budget}): not loaded")


def load_head(path, *, trust: bool = False):
    """Load a head saved by ``featx fit``, and its card. Returns ``(estimator, card)``.

    A skops head is loaded when it holds only trusted types (see the module doc) and, when it has a card,
    matches the sha256 recorded there (it was not changed after ``featx fit``). A pickle is loaded only with
    ``trust`` (for a file you made yourself): unpickling runs code. ``trust`` also lifts the two checks above.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise FeatxUsageError(f"head {path} does not exist") from None
    except OSError as exc:
        raise FeatxError(f"head {path} cannot be read ({exc.strerror or exc})") from None
    cp = card_path(path)
    try:
        card = json.loads(cp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        card = None
    except (OSError, ValueError) as exc:
        raise FeatxError(f"head {path} has a card {cp} that cannot be read ({exc})") from None
    if magic != _ZIP_MAGIC:
        kind = file_kind(path)
        if kind in ("hdf5", "image", "text"):  # a cache or a picture given where a head goes
            raise FeatxUsageError(f"{path} is not a head: it is {FILE_KINDS[kind]}")
        return _load_pickle(path, trust), card or {}
    check_archive(path, card)  # sizes from the zip's directory: a decompression bomb is refused before inflating
    inside = _card_inside(path)
    if inside is not None:  # head and card saved as one file: the copy beside it cannot change a prediction
        card = _with_card_inside(path, inside, card)
    elif card is not None and not trust and file_sha256(path) != card.get("head_sha256"):
        raise FeatxError(f"head {path} does not match its card {cp.name} (sha256): it was changed after "
                         "`featx fit`; refit it, or pass --trust to load it anyway")
    sio = _skops()
    if sio is None:
        raise FeatxError(f"head {path} is in skops' format and skops is not installed: pip install 'featx[safe]'")
    try:
        found = sio.get_untrusted_types(file=path)
        trusted = trusted_types()
        unknown = [t for t in found if t not in trusted]
        if unknown and not trust:
            raise FeatxError(f"head {path} holds types featx does not trust ({', '.join(unknown[:3])}"
                             f"{', ...' if len(unknown) > 3 else ''}): not loaded; pass --trust only if you know "
                             "where it comes from")
        est = sio.load(path, trusted=found)
    except FeatxError:
        raise
    except Exception as exc:  # a damaged or foreign zip can raise anything
        raise FeatxError(f"head {path} cannot be loaded ({type(exc).__name__}: {first_line(exc)})") from None
    check_card(card or {}, est, path)
    return est, card or {}


def read_card(path) -> dict | None:
    """A head's card without loading the head (the card inside, else the copy beside it; ``None``: neither), for
    checks that must come before any model is loaded. :func:`load_head` checks the card against the head."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            inside = _card_inside(path) if fh.read(4) == _ZIP_MAGIC else None
    except OSError:
        return None  # load_head says why the head cannot be read
    if inside is not None:
        return inside
    try:
        card = json.loads(card_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _card_inside(path: Path) -> dict | None:
    """The card saved inside a head file (``None`` for a head of an earlier featx, which has none)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            if CARD_ENTRY not in z.namelist():
                return None
            card = json.loads(z.read(CARD_ENTRY).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FeatxError(f"head {path}: its card cannot be read ({first_line(exc)})") from None
    if not isinstance(card, dict):
        raise FeatxError(f"head {path}: its card is not a JSON object")
    return card


def _with_card_inside(path: Path, inside: dict, beside: dict | None) -> dict:
    """The card to use: the copy beside the head for what changes no prediction, the card inside for the rest;
    a note when the copy beside it was edited where it matters (the edit is ignored)."""
    beside = beside or {}
    edited = [f for f in PREDICTION_FIELDS if beside and (f in beside or f in inside) and beside.get(f) != inside.get(f)]
    if edited:
        log.info(f"note: {card_path(path).name} differs from the card inside {path.name} in {', '.join(edited)}; "
                 "featx uses the card inside the head (refit to change a head)")
    return {**beside, **inside, "head_sha256": file_sha256(path)}


def check_card(card: dict, est, path) -> None:
    """A one-line error when a card cannot describe its head: the class names (one per class the head was trained
    on), the calibration temperature (finite, above zero), the embedding record (a mapping)."""
    import math

    classes = card.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise FeatxError(f"head {path}: its card's classes are not a list of names")
        trained = getattr(est, "classes_", None)
        if trained is not None and len(trained) and (min(trained) < 0 or max(trained) >= len(classes)):
            raise FeatxError(f"head {path} was trained on class {max(trained)} but its card names {len(classes)} "
                             "classes: refit it")
    t = (card.get("calibration") or {}).get("temperature")
    if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise FeatxError(f"head {path}: its card's calibration temperature {t!r} is not a positive number: refit it")
    if "embedding" in card and not isinstance(card["embedding"], dict):
        raise FeatxError(f"head {path}: its card's embedding record is not a mapping: refit it")
    if "multilabel" in card:
        thresholds = (card["multilabel"] or {}).get("thresholds") if isinstance(card["multilabel"], dict) else None
        if not (isinstance(thresholds, list) and len(thresholds) == len(classes or [])
                and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                        for t in thresholds)):
            raise FeatxError(f"head {path}: its card's multi-label thresholds are not one number per label: refit it")


def _load_pickle(path: Path, trust: bool):
    if not trust:
        raise FeatxError(f"head {path} is a pickle (a joblib head from an earlier featx, or not featx's), and "
                         "loading a pickle can run code: refit it with `featx fit` (heads are .skops now), or "
                         "pass --trust only if you made it yourself")
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # a damaged or foreign pickle can raise anything
        raise FeatxError(f"head {path} cannot be loaded ({type(exc).__name__}: {first_line(exc)})") from None
