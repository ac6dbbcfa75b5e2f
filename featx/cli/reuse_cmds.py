"""``featx predict``, ``neighbors``, ``export`` and ``export-model``: a cache and a head used elsewhere."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from ..errors import FeatxError, FeatxUsageError
from ..options import DEVICE_HELP, EXPORT_FORMATS, ExtractOptions, check_device_name
from ..heads.export import MODEL_FORMATS
from .base import (check_output, echo, existing_file, force_option, out_option, progress_renderer, top_k_option,
                   trust_option)

log = logging.getLogger("featx")

__all__ = ["predict", "index", "neighbors", "export", "export_model"]

#: export format -> the file kinds (featx.util.file_kind) an existing output of that format has
EXPORT_KINDS = {"npz": ("zip",), "npy": ("folder",), "parquet": ("data",), "lance": ("folder",)}
_device_option = click.option("--device", default=ExtractOptions().device, show_default=True, help=f"{DEVICE_HELP}.")


def _device(device: str) -> str:
    if not check_device_name(device):
        raise FeatxUsageError(f"unknown device {device!r} (use {DEVICE_HELP})")
    from ..extract import check_device

    check_device(device)
    return device


def _check_card(head_path: str) -> None:
    """Before any model loads: a head without a card, or whose card names no backbone and no cache that still
    exists, cannot say which features it needs (a usage error, in a fraction of a second)."""
    from ..heads.persist import card_path, read_card

    from ..util import FILE_KINDS, file_kind

    if not Path(head_path).is_file():
        return  # load_head says what is wrong with it
    kind = file_kind(head_path)
    if kind in ("hdf5", "image", "text"):  # a cache or a picture given where a head goes
        raise FeatxUsageError(f"{head_path} is not a head: it is {FILE_KINDS[kind]}")
    try:
        card = read_card(head_path)
    except FeatxError:
        return  # a damaged head: load_head says how
    if card is None:
        raise FeatxUsageError(f"{head_path} has no card (none inside it, no {card_path(head_path).name} beside it): "
                              "featx cannot tell which backbone made its features or what its classes are; refit it "
                              "with `featx fit`")
    if not card.get("embedding") and not (card.get("cache") and Path(card["cache"]).exists()):
        gone = f"its cache {card['cache']} is gone" if card.get("cache") else "it names no cache"
        raise FeatxUsageError(f"{head_path}: its card does not say which backbone made its features, and {gone}; "
                              "refit it with this featx")


def _is_finetuned(head_path) -> bool:
    from ..finetune.run import SUFFIX

    return str(head_path).endswith(SUFFIX)


class _SoftmaxScores:
    """The "head" of a fine-tuned network, whose backbone already gives class scores: their softmax."""

    def __init__(self, n_classes: int):
        import numpy as np

        self.classes_ = np.arange(n_classes)

    def predict_proba(self, X):
        from ..util import softmax

        return softmax(X)


def _finetuned(head_path, device: str):
    """featx finetune's network as a backbone whose "embedding" is the class scores, and its softmax head."""
    import dataclasses

    from ..finetune.run import load_finetuned

    net, card, bb = load_finetuned(head_path, device=device)
    return _SoftmaxScores(len(card["classes"])), card, dataclasses.replace(bb, model=net,
                                                                           feature_dim=len(card["classes"]))


def _head_and_embedding(head_path: str, trust: bool):
    """A saved head, its card, and the embedding record of the cache it was trained on."""
    from ..cache.store import open_features
    from ..heads.persist import load_head

    head, card = load_head(head_path, trust=trust)
    embedding = card.get("embedding")
    if not embedding:  # a card written before featx recorded it: the cache still has it
        _check_card(head_path)
        fs = open_features(card["cache"])
        if fs.cache_key != card.get("cache_key"):  # another cache now has that name: not the head's features
            raise FeatxError(f"{head_path}: its card does not say which backbone made its features, and {fs.path} "
                             f"now holds other features (key {fs.cache_key}, not {card.get('cache_key')}); refit it")
        embedding = fs.meta
    return head, card, embedding


def _head_file_option(command):
    """``--head-file/-F FILE``: a saved head. ``--head/-H`` names a head *kind* in fit, grid and adapt; here it was
    the file, and still works (hidden) with a note saying the new spelling."""
    command = click.option("--head", "-H", "old_head", hidden=True, type=click.Path(dir_okay=False),
                           help="The old spelling of --head-file.")(command)
    return click.option("--head-file", "-F", "head_path", type=click.Path(dir_okay=False),
                        help="A head saved by `featx fit` (.skops; its card is inside, a copy beside it).")(command)


def _head_file(head_path: str | None, old_head: str | None) -> str:
    """The head file named by ``--head-file`` (or, deprecated, ``--head``); checked before any work."""
    if head_path and old_head:
        raise FeatxUsageError("give the head file once, with --head-file")
    path = head_path or old_head
    if not path:
        raise FeatxUsageError("name the saved head with --head-file FILE (.skops from `featx fit`)")
    existing_file(path, "head")
    if old_head:
        log.info("note: --head/-H names a head file here, and a head kind in fit, grid and adapt; say --head-file/-F "
                 "(--head keeps working)")
    return path


@click.command()
@_head_file_option
@click.argument("images", nargs=-1, required=True, type=click.Path())
@top_k_option(5, "Classes to show per image.")
@out_option("Also write the predictions to this .csv or .json file (--output: its name before featx 0.2).",
            aliases=("--output",))
@click.option("--batch-size", type=click.IntRange(min=1), default=ExtractOptions().batch_size, show_default=True,
              help="Images per forward pass.")
@_device_option
@trust_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@force_option
def predict(head_path, old_head, images, top_k, out, batch_size, device, trust, no_progress,
            force):  # one parameter per option: click's convention
    """Classify new images (files or folders) with a trained head.

    The backbone, weights, layer, transform and precision are the ones recorded for the head's
    cache; featx refuses if they are not available here. Prints the top-k classes with their
    probabilities (or decision scores, for heads without probabilities). Unreadable images are
    reported and skipped; when none is readable the command fails and writes nothing.
    """
    head_path = _head_file(head_path, old_head)
    if out and Path(out).suffix.lower() not in (".csv", ".json"):
        raise FeatxUsageError(f"--out {out}: give a .csv or .json file name")
    for image in images:
        if not Path(image).exists():
            raise FeatxUsageError(f"{image} does not exist")
    if out:
        check_output(out, {"the head": head_path, "an image named": list(images)}, replaces=("text",), force=force)
    _check_card(head_path)
    _device(device)
    from ..inference import backbone_for, embed_images, image_paths, predict_images

    if _is_finetuned(head_path):  # featx finetune's network: images -> class scores, softmaxed
        head, card, bb = _finetuned(head_path, device)
        emb = card["embedding"]
    else:
        head, card, emb = _head_and_embedding(head_path, trust)
        bb = None
    paths = image_paths(images)
    if not paths:
        raise FeatxUsageError("no images found in " + ", ".join(images))
    bb = bb or backbone_for(emb, device=device)
    render = progress_renderer(enabled=not no_progress and len(paths) >= 2 * batch_size)
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if render:
            render(done[0], len(paths), "predicting")

    X, good, bad = embed_images(bb, paths, device=device, precision=emb.get("precision", "fp32"),
                                batch_size=batch_size, decoder=emb.get("decoder", "pil"), progress=step)
    if not good:  # nothing to predict: a failure, and nothing is written
        raise FeatxError(f"none of the {len(paths)} image(s) could be read ({bad[0][0]}: {bad[0][1]})")
    calibration = card.get("calibration") or {}
    if card.get("multilabel"):  # every label at or above its threshold
        from ..inference import predict_label_sets

        preds = predict_label_sets(head, card["classes"], X, good, card["multilabel"]["thresholds"])
    else:
        if calibration.get("skipped"):
            echo(f"featx: note: scores are not calibrated: {calibration['skipped']}", err=True)
        preds = predict_images(head, card.get("classes") or [], X, good, k=top_k,
                               temperature=calibration.get("temperature"))
    for p in preds:
        shown = ", ".join(f"{label} {score:.3f}" for label, score in zip(p.labels, p.scores))
        echo(f"{p.path}\t{shown or '(no label at or above its threshold)'}")
    for path, reason in bad:
        echo(f"featx: skipped unreadable image {path}: {reason}", err=True)
    if out:
        _write_predictions(Path(out), head_path, preds, bad)
        echo(f"wrote {out}", err=True)
    echo(f"{len(preds)} predicted, {len(bad)} unreadable", err=True)


def _write_predictions(out: Path, head_path, preds, bad) -> None:
    import csv

    from ..util import atomic_write

    with atomic_write(out) as tmp:
        if out.suffix.lower() == ".json":
            tmp.write_text(json.dumps({"head": str(head_path), "kind": preds[0].kind if preds else None,
                                       "predictions": [p.__dict__ for p in preds],
                                       "unreadable": [{"path": a, "reason": b} for a, b in bad]}, indent=2,
                                      ensure_ascii=False) + "\n", encoding="utf-8")
            return
        rows = [{"path": p.path, "rank": r + 1, "label": label, p.kind.replace(" ", "_"): score}
                for p in preds for r, (label, score) in enumerate(zip(p.labels, p.scores))]
        rows += [{"path": path, "rank": "", "label": "", "error": reason} for path, reason in bad]
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "rank", "label", "probability", "calibrated_probability",
                                                   "decision_score", "error"])
            writer.writeheader()
            writer.writerows(rows)


@click.command("index")
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(["auto", "flat", "hnsw", "ivf"]), default="auto", show_default=True,
              help="auto: exact (flat) below 20,000 rows, an HNSW graph up to 2 million, inverted lists (ivf) above; "
                   "or name one.")
@force_option
def index(cache, kind, force):
    """Build an approximate-neighbour index (FAISS) beside a cache, <cache>.faiss: its search depth raised until
    recall@10 against the exact search reaches 0.95, measured and recorded (<cache>.faiss.json) with both searches'
    speed. `featx neighbors` uses it while it matches the cache."""
    existing_file(cache, "cache file")
    from ..cache.ann import build_index, index_path

    target = index_path(cache)
    check_output(target, {"the cache": cache}, replaces=("data",), force=force)
    check_output(Path(f"{target}.json"), {"the cache": cache}, replaces=("text",), force=force)
    from ..cache.store import open_features

    r = build_index(open_features(cache), kind)
    recall = next(v for k, v in r.items() if k.startswith("recall_at_"))
    echo(f"{r['kind']} index of {r['rows']} rows x {r['dim']} in {r['build_seconds']:.1f} s "
         f"{json.dumps(r['params']) if r['params'] else ''}: recall@10 {recall:.4f} against the exact search on "
         f"{r['recall_queries']} rows; {r['index_ms_per_query']:.3f} ms per query against {r['exact_ms_per_query']:.3f} "
         f"exact ({r['speedup']:g}x)")
    echo(f"wrote {target} and {target}.json")


@click.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@top_k_option(5, "Neighbours per image.")
@click.option("--split", "splits", multiple=True, help="Search only this split (repeatable; default all).")
@_device_option
def neighbors(cache, images, top_k, splits, device):
    """The cached items most similar (cosine) to each image, embedded with the cache's own backbone."""
    existing_file(cache, "cache file")
    for image in images:
        if not Path(image).exists():
            raise FeatxUsageError(f"{image} does not exist")
    _device(device)
    from ..cache.store import open_features
    from ..inference import backbone_for, embed_images, image_paths, nearest

    fs = open_features(cache)
    for s in splits:
        if s not in fs:
            raise FeatxUsageError(f"{cache} has no split {s!r} (it has {', '.join(fs.splits)})")
    bb = backbone_for(fs.meta, device=device)
    paths = image_paths(images)
    if not paths:
        raise FeatxUsageError("no images found in " + ", ".join(images))
    X, good, bad = embed_images(bb, paths, device=device, precision=fs.meta.get("precision", "fp32"),
                                decoder=fs.meta.get("decoder", "pil"))
    if not good:
        raise FeatxError(f"none of the {len(paths)} image(s) could be read ({bad[0][0]}: {bad[0][1]})")
    for path, hits in zip(good, nearest(fs, X, top_k, splits=splits or None)):
        echo(path)
        for h in hits:
            echo(f"  {h.rank:>2}. {h.similarity:.4f}  {h.split}/{h.row}  {h.id}  {h.label}")
    for path, reason in bad:
        echo(f"featx: skipped unreadable image {path}: {reason}", err=True)


@click.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="npz", show_default=True,
              help="; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items()) + ".")
@out_option("Output file (npz, parquet) or folder (npy); default next to the cache.", file=None)
@force_option
def export(cache, fmt, out, force):
    """Write a cache's features, labels, ids and class names for tools that do not read HDF5.

    An existing output of the same kind is replaced (atomically for a file)."""
    existing_file(cache, "cache file")
    target = Path(out) if out else Path(cache).with_suffix("" if fmt == "npy" else f".{fmt}")
    check_output(target, {"the cache": cache}, replaces=EXPORT_KINDS[fmt], force=force)
    from ..cache.export import export_arrays
    from ..cache.store import open_features

    fs = open_features(cache)
    for p in export_arrays(fs, target, fmt):
        echo(f"wrote {p}")


@click.command("export-model")
@_head_file_option
@click.option("--format", "fmt", type=click.Choice(list(MODEL_FORMATS)), default=None,
              help="export: a torch.export program (.pt2, load with torch.export.load); onnx: ONNX (.onnx, run "
                   "with onnxruntime; the onnx extra); torchscript: TorchScript (.pt; deprecated by torch). Default: "
                   "the one --out's suffix names, else export.")
@out_option("Output file (default <head>.pt2 / .onnx / .pt).")
@trust_option
@force_option
def export_model(head_path, old_head, fmt, out, trust, force):
    """One deployable module: preprocessed images (N, 3, H, W) -> backbone -> the head's class scores.

    Feed it what the recorded transform produces (resize, crop, normalise); its argmax is featx's
    prediction. Linear heads only (their scaling is folded into the last layer).
    """
    head_path = _head_file(head_path, old_head)
    named = {suffix: f for f, (suffix, _, _) in MODEL_FORMATS.items()}.get(Path(out).suffix.lower()) if out else None
    if fmt and named and named != fmt:  # a file named .onnx that holds something else would mislead its users
        raise FeatxUsageError(f"--out {out} names {named} by its suffix but --format is {fmt}: make them agree",
                              param="out")
    fmt = fmt or named or "export"
    target = Path(out) if out else Path(head_path).with_suffix(MODEL_FORMATS[fmt][0])
    check_output(target, {"the head": head_path}, replaces=("zip", "data"), force=force)
    _check_card(head_path)
    from ..heads.export import export_model as run_export, export_network
    from ..inference import backbone_for

    if _is_finetuned(head_path):
        from ..finetune.run import load_finetuned

        net, card, bb = load_finetuned(head_path)
        export_network(net, bb, target, fmt)
        head = _SoftmaxScores(len(card["classes"]))
    else:
        head, card, emb = _head_and_embedding(head_path, trust)
        bb = backbone_for(emb)
        run_export(head, bb, target, fmt)
    echo(f"wrote {target}: input (N, {', '.join(map(str, bb.preprocess.get('input_size', [])))}) "
               f"preprocessed images, output (N, {len(head.classes_)}) scores for {card.get('classes')}; "
               f"load it with {MODEL_FORMATS[fmt][2]}")
