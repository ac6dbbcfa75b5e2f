"""The extraction stage: source -> DataLoader -> frozen backbone -> resumable HDF5 writer.

:func:`extract` runs four named steps a reader can follow:

1. :func:`plan_extraction` -- the items (this rank's block when sharded), the cache key, the file and
   its attributes; nothing is read or written yet.
2. reuse: a complete cache with the same key is the answer.
3. :func:`_run` -- open (or resume) the writer, decode and embed batch by batch, append and commit.
4. finalise -- mark the cache complete, rename it into place, warn about classes with no readable image.

Messages go to the ``featx`` logger; progress goes to an optional callback ``progress(done, total,
label)``, which the command line renders as a bar (terminal) or steady lines (log file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .backbones.registry import Backbone
from .cache.store import SCHEMA_VERSION, FeatureWriter, open_features, partial_path
from .data.balance import Balance, measure_balance, threaded_batches
from .data.decoding import image_input, scaled_decoding_hint, to_rgb
from .data.device import RawImage, preprocess_batch, raw_from_pil, read_raw
from .data.sources import FileSource, Source, SplitItems
from .errors import FeatxError, FeatxUsageError
from .options import DECODERS, DEVICE_HELP, PRECISIONS, ExtractOptions
from .util import first_line

__all__ = ["ExtractResult", "ExtractPlan", "ProgressFn", "cache_key", "cache_path", "check_device", "extract",
           "plan_extraction", "embed"]

log = logging.getLogger("featx")

#: ``progress(done, total, label)``: called once at the start and after every batch.
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExtractResult:
    path: Path
    cache_key: str
    reused: bool
    resumed: bool
    n_items: int
    n_new: int
    n_skipped: int
    seconds: float
    #: how the input pipeline was balanced (measured costs and the choice), "" when not measured
    pipeline: str = ""
    #: seconds spent appending to the HDF5 file (on the critical path)
    write_seconds: float = 0.0
    #: rows copied from other caches (``--reuse``) instead of embedded, and where from
    n_reused: int = 0
    reused_from: list = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 else 0.0


def cache_key(source: Source, backbone: Backbone, precision: str, decoder: str = "pil") -> str:
    """Hash of everything that determines the features (16 hex digits)."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "source": source.fingerprint(),
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "transform": backbone.preprocess,
        "precision": precision,
    }
    if backbone.layer:  # only when set, so that penultimate-layer keys stay as they were
        record["layer"] = backbone.layer
    if decoder != "pil" and (isinstance(source, FileSource) or DECODERS[decoder].on_device):
        record["decoder"] = decoder  # idem; in-memory datasets have no files to decode, but may preprocess on device
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: str | os.PathLike, source: Source, backbone: Backbone, key: str) -> Path:
    """``<cache_dir>/<source>/<backbone>-<key>.h5``."""
    return Path(cache_dir) / source.name / f"{backbone.name}-{key}.h5"


class _Items(Dataset):
    """Items ``start:`` of one split; a failed decode becomes a recorded skip, not a crash."""

    def __init__(self, source: Source, items: SplitItems, start: int, transform: Callable, decoder: str = "pil"):
        self.source, self.items, self.start, self.transform, self.decoder = source, items, start, transform, decoder
        self.on_device = DECODERS[decoder].on_device

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, i: int):
        j = self.start + i
        key = self.items.keys[j]
        try:
            if self.on_device:  # raw bytes / uint8 pixels; decoded and preprocessed a batch at a time on the device
                if isinstance(self.source, FileSource):
                    return read_raw(key, to_rgb, self.source.open), j, ""
                return raw_from_pil(self.source.open(key), to_rgb), j, ""
            decoder = self.decoder if isinstance(self.source, FileSource) else "pil"  # in-memory: nothing to decode
            return image_input(key, self.transform, decoder, self.source.open), j, ""
        except Exception as exc:  # any decode/transform failure of this one item
            return None, j, f"{type(exc).__name__}: {exc}"


def _collate(batch):
    good = [(x, j) for x, j, _ in batch if x is not None]
    bad = [(j, err) for x, j, err in batch if x is None]
    if good and isinstance(good[0][0], RawImage):  # the device path: stacked after preprocessing
        xs = [x for x, _ in good]
    else:
        xs = torch.stack([x for x, _ in good]) if good else None
    return xs, [j for _, j in good], bad


def embed(backbone: Backbone, x: torch.Tensor, *, device: torch.device, precision: str = "fp32",
          channels_last: bool = True, model: Callable | None = None, pad_to: int = 0) -> np.ndarray:
    """One batch of preprocessed images -> fp32 embeddings as numpy.

    ``model`` replaces ``backbone.model`` (a compiled version of it); ``pad_to`` pads a short batch
    with zeros to that size and drops their rows (a compiled model then sees one shape only; the
    backbone is in eval mode, so rows do not influence each other).
    """
    n = len(x)
    if pad_to > n:
        x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = PRECISIONS[precision].autocast
    dtype = getattr(torch, autocast) if autocast else None
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = (model if model is not None else backbone.model)(x)
    return out[:n].float().cpu().numpy()


def tune_malloc() -> bool:
    """Keep glibc's allocator from returning big buffers to the OS after every forward pass.

    By default glibc serves blocks above 128 KiB (adaptively up to 32 MiB) with mmap and gives
    them back on free, so each batch's activations are page-faulted in again. Raising the mmap
    threshold to its maximum and the trim threshold to 256 MiB keeps them in the heap: the bare
    ResNet-50 forward on 2 CPU cores, batch 16, went from 16.7 to 19.7 images/s in fp32 and from
    36.5 to 41.0 in bf16 (means of 3 runs, docs/benchmarks.md). Memory stays bounded by the
    largest batch's working set.
    Only on glibc; ``FEATX_SYSTEM_MALLOC=1`` leaves the allocator alone. Returns whether it applied.
    """
    if os.environ.get("FEATX_SYSTEM_MALLOC") or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 256 << 20))


def _default_workers(device: torch.device) -> int:
    """DataLoader workers when not given: none on a small CPU box, where decoding in the main
    process beat one worker competing with the backbone's threads (62 vs 50 images/s for
    MobileNetV2 on Fashion-MNIST on 2 cores); otherwise enough to keep the device fed."""
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cores <= 2 else min(4, cores // 4)
    return min(8, cores - 1)


def check_device(device: str) -> torch.device:
    """The torch device for a device name, or a usage error saying why it cannot be used here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise FeatxUsageError(f"unknown device {device!r} (use {DEVICE_HELP})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatxUsageError(f"device {device} asked for, but this machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FeatxUsageError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise FeatxUsageError(f"device {device!r} is not supported (use {DEVICE_HELP})")
    return dev


@dataclass
class ExtractPlan:
    """What one extraction will do, before anything is read or written."""

    splits: dict[str, SplitItems]
    key: str
    path: Path
    attrs: dict
    total: int
    shard: tuple[int, int] | None = None
    classes: list = field(default_factory=list)


def plan_extraction(source: Source, backbone: Backbone, options: ExtractOptions, *, out=None,
                    shard: tuple[int, int] | None = None) -> ExtractPlan:
    """Step 1: items, cache key, target file (this rank's shard file when sharded) and its attributes."""
    splits = source.splits()
    key = cache_key(source, backbone, options.precision, options.decoder)
    path = Path(out) if out else cache_path(options.cache_dir, source, backbone, key)
    attrs = {}
    if shard is not None and shard[1] > 1 and not path.exists():
        from .cache.shards import check_world, shard_items, shard_path

        rank, world = shard
        check_world(path, world)
        splits = {s: shard_items(items, rank, world) for s, items in splits.items()}
        path = shard_path(path, rank, world)
        attrs["shard"] = f"{rank}/{world}"
    else:
        shard = None
    attrs.update({
        "cache_key": key,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256 or "",
        "transform": backbone.preprocess,
        "source": source.describe(),
        "precision": options.precision,
        "memory_format": "channels_last" if options.channels_last else "contiguous",
        "layer": backbone.layer or "penultimate",
        "decoder": (options.decoder if isinstance(source, FileSource) or DECODERS[options.decoder].on_device
                    else "in-memory"),
        "compiled": bool(options.compile),
    })
    return ExtractPlan(splits, key, path, attrs, sum(len(i) for i in splits.values()), shard, list(source.classes))


def extract(source: Source, backbone: Backbone, options: ExtractOptions | None = None, *, out=None,
            progress: ProgressFn | None = None, shard: tuple[int, int] | None = None, **settings) -> ExtractResult:
    """Run ``backbone`` over every item of ``source`` once and write the cache.

    Args:
        source, backbone: what to embed and with what.
        options: the extraction settings (:class:`featx.options.ExtractOptions`; its defaults when
            not given); keyword ``settings`` (``precision="bf16"``, ``batch_size=8``, ...) override
            single fields and are validated the same way.
        out: the cache file (default ``<cache_dir>/<source>/<backbone>-<key>.h5``).
        progress: ``progress(done, total, label)`` after every batch (``None``/``False``: none).
        shard: ``(rank, world)``: only that rank's block of every split, into its own shard file
            (:mod:`featx.cache.shards`; :func:`featx.cache.shards.merge_shards` joins them).

    Reuses a complete cache with the same key; resumes an unfinished one. Unreadable items are
    recorded skips; with ``strict`` the first one stops the run instead, before the cache is marked
    complete. ``compile`` runs the backbone through ``torch.compile`` (opt-in: ~30 s of compiling
    first; MobileNetV2's forward 1.9x faster on 2 CPU cores, same features within 1e-6), recorded in
    the cache but not part of its key, like the memory format.
    """
    import dataclasses

    options = dataclasses.replace(options or ExtractOptions(), **settings)
    plan = plan_extraction(source, backbone, options, out=out, shard=shard)
    if plan.path.exists():  # step 2: reuse
        existing = open_features(plan.path)
        if existing.cache_key != plan.key:
            raise FeatxUsageError(f"{plan.path} holds another cache (key {existing.cache_key}, this run's is "
                                  f"{plan.key}); choose another --out or delete it")
        return ExtractResult(plan.path, plan.key, True, False, plan.total, 0, 0, 0.0)
    tune_malloc()
    index = _row_index(plan, options, explicit_out=out is not None)
    writer = FeatureWriter(plan.path, attrs=plan.attrs, classes=plan.classes,
                           split_sizes={s: len(i) for s, i in plan.splits.items()}, feature_dim=backbone.feature_dim)
    with writer:
        n_new, n_skipped, seconds, balance, write_s = _run(plan, writer, source, backbone, options, progress, index)
        reused = index.provenance() if index is not None else []
        if reused:
            writer.set_attr("reused_from", reused)
        writer.finalize()  # step 4
    n_reused = sum(r["rows"] for r in reused)
    if n_reused:
        where = ", ".join(f"{r['rows']} rows from {r['path']}" for r in reused)
        log.debug(f"reused {where}, embedded {n_new}")  # featx extract says it in its summary line
    if plan.shard is None:
        _warn_empty_classes(plan.path, plan.classes, plan.splits)
    if options.decoder == "pil" and isinstance(source, FileSource):
        hint = scaled_decoding_hint([k for items in plan.splits.values() for k in items.keys], backbone.transform)
        if hint:
            log.info(hint)
    return ExtractResult(plan.path, plan.key, False, writer.resumed, plan.total, n_new, n_skipped, seconds,
                         balance.describe() if balance else "", write_s, n_reused, reused)


def _row_index(plan: ExtractPlan, options: ExtractOptions, *, explicit_out: bool = False):
    """The donor caches' rows this run may copy (``--reuse``: auto = the complete caches beside this one in the
    dataset's cache folder, not for a file named with ``--out``; a file; none); ``None`` when there are none.
    Sharded runs embed their block (a merge then joins the shards)."""
    from .cache.reuse import RowIndex, check_donor, feature_record, find_donors

    choice = str(options.reuse)
    if choice == "none" or plan.shard is not None or (choice == "auto" and explicit_out):
        return None
    record = feature_record(plan.attrs)
    if choice == "auto":
        donors = find_donors(plan.path.parent, record, exclude=[plan.path])
    else:
        donors = [check_donor(choice, record)]
    if not donors:
        return None
    index = RowIndex(donors)
    return index if len(index) else None


def _run(plan: ExtractPlan, writer: FeatureWriter, source: Source, backbone: Backbone, options: ExtractOptions,
         progress: ProgressFn | None, index=None):
    """Step 3: embed every item the writer does not have yet (copying the rows ``index`` has for unchanged
    items instead).

    Returns (embedded, skipped, seconds, the pipeline balance or None, seconds spent writing)."""
    dev = check_device(options.device)
    model = torch.compile(backbone.model) if options.compile else None  # compiles on its first batch
    label = f"{backbone.name} on {source.name}"
    report = progress if callable(progress) else (lambda done, total, label: None)
    if writer.discarded:
        log.warning(f"warning: {writer.discarded}; starting over")
    done = sum(writer.position(s) for s in plan.splits)
    if writer.resumed:
        log.info(f"resuming {writer.partial}: {done}/{plan.total} items already done")
    todo = {s: items for s, items in plan.splits.items() if writer.position(s) < len(items)}
    # each item's content fingerprint, recorded per row and compared by row reuse (one stat per file)
    fingerprints = {split: source.item_fingerprints(items) for split, items in todo.items()}
    work = {}  # split -> (the items to embed as a dataset, their indices in the split or None = from the position)
    for split, items in todo.items():
        start = writer.position(split)
        if index is None:
            work[split] = (_Items(source, items, start, backbone.transform, options.decoder), None)
            continue
        rest = np.arange(start, len(items))
        hits = index.match([items.ids[j] for j in rest], fingerprints[split][start:])
        fresh = np.array([j for j, hit in zip(rest, hits) if hit is None], dtype=np.int64)
        work[split] = (_Items(source, items.take(fresh), 0, backbone.transform, options.decoder),
                       (fresh, dict(zip(rest.tolist(), hits))))
    first = next((ds for ds, _ in work.values() if len(ds)), None)
    balance, decoded = _balance(first, backbone, options, dev, sum(len(ds) for ds, _ in work.values()))
    n_new = n_skipped = 0
    write_s = 0.0
    start_time = time.perf_counter()
    report(done, plan.total, label)
    threads = torch.get_num_threads()
    try:
        if balance is not None:
            torch.set_num_threads(balance.torch_threads)
        for split, items in todo.items():
            ds, reuse = work[split]
            embedded = _embedded(ds, options, dev, balance, decoded if ds is first else {}, backbone, model)
            if reuse is not None:
                embedded = _merged(embedded, reuse, writer.position(split), len(items), index, options.batch_size,
                                   backbone.feature_dim)
            for feats, idx, bad, copied in embedded:
                if bad and options.strict:
                    raise FeatxError(f"--strict: {items.ids[bad[0][0]]} is unreadable ({bad[0][1]}); "
                                     "stopped before the cache was marked complete")
                t0 = time.perf_counter()
                try:
                    writer.append(split, feats, items.labels[idx], [items.ids[j] for j in idx],
                                  skipped=[(items.ids[j], err) for j, err in bad],
                                  fingerprints=[fingerprints[split][j] for j in idx])
                except OSError as exc:  # disk full, quota, I/O error
                    done = sum(writer.position(s) for s in plan.splits)
                    raise FeatxError(f"could not write {writer.partial} ({_reason(exc)}) after {done}/{plan.total} "
                                     "items; free space and run again: it resumes from there") from None
                write_s += time.perf_counter() - t0
                n_new += len(idx) - copied
                n_skipped += len(bad)
                done += len(idx) + len(bad)
                report(done, plan.total, label)
    except KeyboardInterrupt:
        done = sum(writer.position(s) for s in plan.splits)
        raise FeatxError(f"interrupted after {done}/{plan.total} items; {partial_path(plan.path)} keeps them and the "
                         "next run resumes") from None
    finally:
        torch.set_num_threads(threads)
    return n_new, n_skipped, time.perf_counter() - start_time, balance, write_s


#: Below this many images, measuring the pipeline costs more than it can save.
BALANCE_MIN_IMAGES = 64


def _balance(ds: "_Items | None", backbone: Backbone, options: ExtractOptions, dev: torch.device,
             remaining: int) -> tuple[Balance | None, dict]:
    """Measure decode and forward cost on the first items of ``ds`` (the first split's items to embed) and size
    the pipeline (``--workers`` unset, CPU or CUDA, enough images); ``None`` = the fixed default. Also returns
    the items decoded while measuring (index in ``ds`` -> decoded item), so that none is decoded twice."""
    decoded: dict = {}
    if options.workers >= 0 or dev.type not in ("cpu", "cuda") or remaining < BALANCE_MIN_IMAGES or ds is None:
        return None, decoded

    def decode_one(i: int) -> None:
        decoded[i] = ds[i]

    crop = int(backbone.preprocess["input_size"][-1])
    x = torch.zeros(min(4, options.batch_size), 3, crop, crop)  # a small batch: measuring costs little
    balance = measure_balance(decode_one, len(ds), lambda: embed(backbone, x, device=dev,
                              precision=options.precision, channels_last=options.channels_last), len(x),
                              accelerator=dev.type != "cpu")
    log.info(f"pipeline: {balance.describe()}")
    return balance, decoded


def _embedded(ds: "_Items", options: ExtractOptions, dev: torch.device, balance, decoded: dict, backbone: Backbone,
              model):
    """``(features, item indices, unreadable, 0)`` per batch of ``ds``, in order (indices as ``ds`` returns
    them: positions in its split from its start, or in its own item list)."""
    if not len(ds):
        return
    for xs, idx, bad in _batches(ds, options, dev, balance, decoded):
        if isinstance(xs, list):  # --decoder device: decode + preprocess the batch where the model runs
            xs, idx, bad = _on_device(xs, idx, bad, backbone, dev)
        yield _embed_batch(backbone, xs, dev, options, model), list(idx), list(bad), 0


def _merged(embedded, reuse, start: int, n: int, index, batch_size: int, dim: int):
    """Items ``start:n`` of a split in order, in batches of ``batch_size`` consecutive items: rows copied from
    the donor caches where ``reuse`` has one, embedded rows (from ``embedded``, over the items without one, in
    order) elsewhere. Yields ``(features, item indices, unreadable, rows copied)`` like :func:`_embedded`."""
    fresh, hits = reuse
    rows: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    stream = iter(embedded)
    for lo in range(start, n, batch_size):
        feats, idx, bad, copied = [], [], [], 0
        for j in range(lo, min(lo + batch_size, n)):
            hit = hits[j]
            if hit is not None:
                feats.append(index.row(hit))
                idx.append(j)
                copied += 1
                continue
            while j not in rows and j not in failed:
                f, local, local_bad, _ = next(stream)
                rows.update({int(fresh[k]): f[i] for i, k in enumerate(local)})
                failed.update({int(fresh[k]): err for k, err in local_bad})
            if j in rows:
                feats.append(rows.pop(j))
                idx.append(j)
            else:
                bad.append((j, failed.pop(j)))
        yield (np.stack(feats) if feats else np.zeros((0, dim), np.float32)), idx, bad, copied


def _batches(ds: "_Items", options: ExtractOptions, dev: torch.device, balance: Balance | None, decoded: dict):
    """Batches of (inputs, indices, unreadable) from decoding threads (a measured balance; ``decoded`` holds
    items already decoded while measuring), or a DataLoader (``--workers N``, GPUs, small runs)."""
    if balance is not None and balance.decode_threads > 0:
        def get(i: int):
            return decoded.pop(i) if i in decoded else ds[i]

        return threaded_batches(get, len(ds), options.batch_size, balance.decode_threads, _collate)
    workers = 0 if balance is not None else (_default_workers(dev) if options.workers < 0 else options.workers)
    return DataLoader(ds, batch_size=options.batch_size, num_workers=workers, collate_fn=_collate,
                      pin_memory=dev.type == "cuda")


def _on_device(raws, idx, bad, backbone: Backbone, dev: torch.device):
    """Decode and preprocess a batch of :class:`RawImage` on the device; when the joint decode fails (a corrupt
    JPEG fails the whole call), decode each item alone and record the failing ones as skips."""
    try:
        return preprocess_batch(raws, backbone.transform.inner, dev), idx, bad
    except RuntimeError as exc:
        log.info(f"note: an image of a batch failed the device decode ({first_line(exc)}); decoding that batch "
                 "image by image")
    good, kept = [], []
    for raw, j in zip(raws, idx):
        try:
            good.append(preprocess_batch([raw], backbone.transform.inner, dev))
            kept.append(j)
        except RuntimeError as item_exc:
            bad = [*bad, (j, f"{type(item_exc).__name__}: {first_line(item_exc)}")]
    return (torch.cat(good) if good else None), kept, bad


def _embed_batch(backbone: Backbone, xs, dev: torch.device, options: ExtractOptions, model) -> np.ndarray:
    if xs is None:  # every item of the batch was unreadable
        return np.zeros((0, backbone.feature_dim), np.float32)
    try:
        return embed(backbone, xs, device=dev, precision=options.precision, channels_last=options.channels_last,
                     model=model, pad_to=options.batch_size if options.compile else 0)
    except Exception as exc:
        if not options.compile:
            raise
        raise FeatxError(f"--compile: torch.compile failed ({first_line(exc)}); run without --compile "
                         "(it needs a C++ compiler on CPU)") from None


def _reason(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        detail = f"; {exc.strerror}" if exc.strerror and exc.strerror != os.strerror(exc.errno) else ""
        return f"the disk (or the file size limit) is full{detail}"
    return first_line(exc)


def _warn_empty_classes(path: Path, classes, splits: dict[str, SplitItems]) -> None:
    """Say so when every item of a class was unreadable (e.g. a folder of broken files)."""
    if "train" not in splits:
        return
    listed = set(np.unique(splits["train"].labels).tolist())
    present = set(np.unique(open_features(path)["train"].y).tolist())
    empty = [c for i, c in enumerate(classes) if i in listed and i not in present]
    if empty:
        log.warning(f"warning: train has no readable image of class(es) {', '.join(empty)}")
