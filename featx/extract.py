"""The extraction loop: source -> DataLoader -> frozen backbone -> resumable HDF5 writer."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .backbones import Backbone
from .errors import FeatxError
from .sources import FileSource, Source, SplitItems, decode_tensor, open_image
from .store import SCHEMA_VERSION, FeatureWriter, open_features, partial_path

__all__ = ["PRECISIONS", "ExtractResult", "cache_key", "cache_path", "extract", "embed"]

#: name -> autocast dtype (``None`` = plain fp32, the default).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    if decoder != "pil" and isinstance(source, FileSource):  # idem; in-memory datasets have no files to decode
        record["decoder"] = decoder
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: str | os.PathLike, source: Source, backbone: Backbone, key: str) -> Path:
    """``<cache_dir>/<source>/<backbone>-<key>.h5``."""
    return Path(cache_dir) / source.name / f"{backbone.name}-{key}.h5"


#: Image decoders: ``pil`` (the default: PIL, as torchvision's ImageFolder loader) or ``torchvision``
#: (``torchvision.io.decode_image`` + the weights' own preset on the uint8 tensor, as in torchvision's
#: documentation; ~1.7x faster per image here, features within ~1.5% -- opt-in and part of the cache key).
DECODERS = ("pil", "torchvision")


def image_input(key, transform: Callable, decoder: str = "pil", open_pil: Callable = open_image) -> torch.Tensor:
    """One image -> a backbone's input tensor (``transform`` is its ``Backbone.transform``), decoded as
    ``decoder`` says (see :data:`DECODERS`; ``torchvision`` needs ``key`` to be a file path); the PIL
    path opens ``key`` with ``open_pil`` (a source's own ``open``)."""
    if decoder == "torchvision":
        img = decode_tensor(key)
        if img is not None:  # None: a format or mode that goes through PIL
            return transform.inner(img)  # the weights' own preset, on the uint8 tensor
    return transform(open_pil(key))


class _Items(Dataset):
    """Items ``start:`` of one split; a failed decode becomes a recorded skip, not a crash."""

    def __init__(self, source: Source, items: SplitItems, start: int, transform: Callable, decoder: str = "pil"):
        self.source, self.items, self.start, self.transform, self.decoder = source, items, start, transform, decoder

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, i: int):
        j = self.start + i
        key = self.items.keys[j]
        try:
            decoder = self.decoder if isinstance(self.source, FileSource) else "pil"  # in-memory: nothing to decode
            return image_input(key, self.transform, decoder, self.source.open), j, ""
        except Exception as exc:  # any decode/transform failure of this one item
            return None, j, f"{type(exc).__name__}: {exc}"


def _collate(batch):
    good = [(x, j) for x, j, _ in batch if x is not None]
    bad = [(j, err) for x, j, err in batch if x is None]
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
    dtype = PRECISIONS[precision]
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


def extract(
    source: Source,
    backbone: Backbone,
    *,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = "cache",
    batch_size: int = 16,
    workers: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: click.echo(msg, err=True),
    shard: tuple[int, int] | None = None,
    strict: bool = False,
    decoder: str = "pil",
    compile: bool = False,
) -> ExtractResult:
    """Run ``backbone`` over every item of ``source`` once and write the cache.

    Reuses a complete cache with the same key; resumes an unfinished one. With ``shard=(rank,
    world)`` only that rank's block of every split is extracted, into its own shard file
    (:mod:`featx.shards`; :func:`featx.shards.merge_shards` makes the cache from all of them).
    Unreadable items are recorded skips; with ``strict`` the first one stops the run instead, before
    the cache is marked complete. ``compile`` runs the backbone through ``torch.compile`` (opt-in:
    ~30 s of compiling first; MobileNetV2's forward 1.9x faster on 2 CPU cores, same features within
    1e-6), recorded in the cache but not part of its key, like the memory format.
    """
    if precision not in PRECISIONS:
        raise FeatxError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if batch_size < 1:
        raise FeatxError(f"batch size must be at least 1, got {batch_size}")
    if decoder not in DECODERS:
        raise FeatxError(f"unknown decoder {decoder!r} (choose from {', '.join(DECODERS)})")
    dev = torch.device(device)
    tune_malloc()
    splits = source.splits()
    key = cache_key(source, backbone, precision, decoder)
    path = Path(out) if out else cache_path(cache_dir, source, backbone, key)
    shard_attrs = {}
    if shard is not None and shard[1] > 1 and not path.exists():
        from .shards import check_world, shard_items, shard_path

        rank, world = shard
        check_world(path, world)
        splits = {s: shard_items(items, rank, world) for s, items in splits.items()}
        path = shard_path(path, rank, world)
        shard_attrs["shard"] = f"{rank}/{world}"
    total = sum(len(items) for items in splits.values())
    if path.exists():
        existing = open_features(path)
        if existing.cache_key != key:
            raise FeatxError(
                f"{path} holds another cache (key {existing.cache_key}, this run's is {key}); "
                "choose another --out or delete it"
            )
        return ExtractResult(path, key, True, False, total, 0, 0, 0.0)

    attrs = {
        **shard_attrs,
        "cache_key": key,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256 or "",
        "transform": backbone.preprocess,
        "source": source.describe(),
        "precision": precision,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "layer": backbone.layer or "penultimate",
        "decoder": decoder if isinstance(source, FileSource) else "in-memory",
        "compiled": bool(compile),
    }
    writer = FeatureWriter(path, attrs=attrs, classes=source.classes,
                           split_sizes={s: len(i) for s, i in splits.items()}, feature_dim=backbone.feature_dim)
    workers = _default_workers(dev) if workers is None else workers
    model = torch.compile(backbone.model) if compile else None  # compiles on its first batch
    n_new = n_skipped = 0
    with writer:
        if writer.discarded:
            log(f"warning: {writer.discarded}; starting over")
        done = sum(writer.position(s) for s in splits)
        if writer.resumed:
            log(f"resuming {writer.partial}: {done}/{total} items already done")
        start_time = time.perf_counter()
        bar = click.progressbar(length=total, label=f"{backbone.name} on {source.name}", show_pos=True,
                                file=sys.stderr, hidden=not progress)
        try:
            with bar:
                bar.update(done)
                for split, items in splits.items():
                    start = writer.position(split)
                    if start >= len(items):
                        continue
                    loader = DataLoader(
                        _Items(source, items, start, backbone.transform, decoder), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, pin_memory=dev.type == "cuda",
                    )
                    for xs, idx, bad in loader:
                        if bad and strict:
                            raise FeatxError(f"--strict: {items.ids[bad[0][0]]} is unreadable ({bad[0][1]}); "
                                             "stopped before the cache was marked complete")
                        try:
                            feats = (embed(backbone, xs, device=dev, precision=precision, channels_last=channels_last,
                                           model=model, pad_to=batch_size if compile else 0)
                                     if xs is not None else np.zeros((0, backbone.feature_dim), np.float32))
                        except Exception as exc:
                            if not compile:
                                raise
                            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                            raise FeatxError(f"--compile: torch.compile failed ({reason}); run without --compile "
                                             "(it needs a C++ compiler on CPU)") from None
                        try:
                            writer.append(split, feats, items.labels[idx], [items.ids[j] for j in idx],
                                          skipped=[(items.ids[j], err) for j, err in bad])
                        except OSError as exc:  # disk full, quota, I/O error
                            done = sum(writer.position(s) for s in splits)
                            raise FeatxError(
                                f"could not write {writer.partial} ({_reason(exc)}) after {done}/{total} items; "
                                "free space and run again: it resumes from there") from None
                        n_new += len(idx)
                        n_skipped += len(bad)
                        bar.update(len(idx) + len(bad))
        except KeyboardInterrupt:
            done = sum(writer.position(s) for s in splits)
            raise FeatxError(
                f"interrupted after {done}/{total} items; {partial_path(path)} keeps them and the next run resumes"
            ) from None
        seconds = time.perf_counter() - start_time
        writer.finalize()
    if shard is None or shard[1] == 1:
        _warn_empty_classes(path, source.classes, splits, log)
    return ExtractResult(path, key, False, writer.resumed, total, n_new, n_skipped, seconds)


def _reason(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        detail = f"; {exc.strerror}" if exc.strerror and exc.strerror != os.strerror(exc.errno) else ""
        return f"the disk (or the file size limit) is full{detail}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _warn_empty_classes(path: Path, classes, splits: dict[str, SplitItems], log) -> None:
    """Say so when every item of a class was unreadable (e.g. a folder of broken files)."""
    if "train" not in splits:
        return
    listed = set(np.unique(splits["train"].labels).tolist())
    present = set(np.unique(open_features(path)["train"].y).tolist())
    empty = [c for i, c in enumerate(classes) if i in listed and i not in present]
    if empty:
        log(f"warning: train has no readable image of class(es) {', '.join(empty)}")
