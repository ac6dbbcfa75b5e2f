"""The extraction stage: source -> batches -> frozen backbone -> resumable HDF5 writer.

:func:`extract` runs four named steps a reader can follow:

1. :func:`~featx.extract.plan.plan_extraction` -- the items (this rank's block when sharded), the features'
   :class:`~featx.cache.spec.EmbeddingSpec`, the cache key, the file and its attributes; nothing is read or written.
2. reuse: a complete cache with the same key is the answer.
3. :func:`_run` -- open (or resume) the writer, decode and embed batch by batch (:mod:`featx.extract.batches`),
   append and commit.
4. finalise -- mark the cache complete, rename it into place, warn about classes with no readable image.

Messages go to the ``featx`` logger; progress goes to an optional callback ``progress(done, total,
label)``, which the command line renders as a bar (terminal) or steady lines (log file).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..backbones.registry import Backbone
from ..cache.spec import cache_path
from ..cache.store import open_features, partial_path
from ..cache.writer import FeatureWriter
from ..data.decoding import scaled_decoding_hint
from ..data.sources import FileSource, Source, SplitItems
from ..errors import FeatxError, FeatxUsageError
from ..options import ExtractOptions
from ..util import first_line
from . import batches as _batches
from .batches import Items, embedded, merged
from .plan import ExtractPlan, ExtractResult, check_device, plan_extraction, row_index

__all__ = ["ProgressFn", "extract", "tune_malloc"]

log = logging.getLogger("featx")

#: ``progress(done, total, label)``: called once at the start and after every batch.
ProgressFn = Callable[[int, int, str], None]


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
    if shard is not None and any(items.label_sets is not None for items in plan.splits.values()):
        raise FeatxUsageError("a multi-label source is extracted by one process (sharded caches are joined without "
                              "their label matrices): run featx extract without torchrun / NPROC")
    if plan.path.exists():  # step 2: reuse
        existing = open_features(plan.path)
        if existing.cache_key != plan.key:
            raise FeatxUsageError(f"{plan.path} holds another cache (key {existing.cache_key}, this run's is "
                                  f"{plan.key}); choose another output file or delete it", param="out")
        return ExtractResult(plan.path, plan.key, True, False, plan.total, 0, 0, 0.0)
    tune_malloc()
    default = cache_path(options.cache_dir, source.name, backbone.name, plan.key) if out is not None else None
    index = row_index(plan, options, default_path=default)
    writer = FeatureWriter(plan.path, attrs=plan.attrs, classes=plan.classes,
                           split_sizes={s: len(i) for s, i in plan.splits.items()}, feature_dim=backbone.feature_dim)
    with writer:
        n_new, n_skipped, seconds, balance, write_s = _run(plan, writer, source, backbone, options, progress, index)
        reused = index.provenance() if index is not None else []
        if reused:
            writer.set_attr("reused_from", reused)
        for split, items in plan.splits.items():  # a multi-label source: its label sets, row by row
            if items.label_sets is not None:
                writer.write_label_matrix(split, dict(zip(items.ids, items.label_sets)), len(plan.classes))
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
    # each item's content fingerprint, recorded per row and compared by row reuse (one stat, or one hash, per file;
    # only for the items not written yet: a resumed run does not hash the done ones again)
    fingerprints = {}
    for split, items in todo.items():
        start = writer.position(split)
        fingerprints[split] = [None] * start + source.item_fingerprints(items.take(np.arange(start, len(items))),
                                                                        options.fingerprint)
    work = {split: _work(source, items, writer.position(split), backbone, plan.spec.decoder, index, fingerprints[split])
            for split, items in todo.items()}
    to_embed = sum(len(ds) for ds, _ in work.values())
    if (index is not None and index.explain and to_embed
            and to_embed == sum(len(items) - writer.position(s) for s, items in todo.items())):
        split, items = next(iter(todo.items()))  # the donors gave nothing: say why
        log.info(f"note: reused no row of {', '.join(str(d.path) for d in index.donors)}: "
                 f"{index.why_nothing(items.ids, fingerprints[split])}")
    first = next((ds for ds, _ in work.values() if len(ds)), None)
    balance, decoded = _batches.balance(first, backbone, options, dev, sum(len(ds) for ds, _ in work.values()))
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
            rows = embedded(ds, options, dev, balance, decoded if ds is first else {}, backbone, model)
            if reuse is not None:
                rows = merged(rows, reuse, writer.position(split), len(items), index, options.batch_size,
                              backbone.feature_dim)
            for feats, idx, bad, copied in rows:
                if bad and options.strict:
                    raise FeatxError(f"{items.ids[bad[0][0]]} is unreadable ({bad[0][1]}); "
                                     "stopped before the cache was marked complete", param="strict")
                write_s += _append(writer, plan, split, items, feats, idx, bad, fingerprints[split])
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


def _append(writer: FeatureWriter, plan: ExtractPlan, split: str, items: SplitItems, feats, idx, bad,
            fingerprints: list) -> float:
    """One batch appended and committed; the seconds it took. A full disk is one line saying how to go on."""
    t0 = time.perf_counter()
    try:
        writer.append(split, feats, items.labels[idx], [items.ids[j] for j in idx],
                      skipped=[(items.ids[j], err) for j, err in bad], fingerprints=[fingerprints[j] for j in idx])
    except OSError as exc:  # disk full, quota, I/O error
        done = sum(writer.position(s) for s in plan.splits)
        raise FeatxError(f"could not write {writer.partial} ({_reason(exc)}) after {done}/{plan.total} "
                         "items; free space and run again: it resumes from there") from None
    return time.perf_counter() - t0


def _work(source: Source, items: SplitItems, start: int, backbone: Backbone, decoder: str, index,
          fingerprints: list) -> tuple[Items, tuple | None]:
    """What of one split's items ``start:`` is embedded (as a dataset, decoded by the effective ``decoder``) and,
    with donor rows (``index``), which items are fresh and each item's donor row (``None`` = embed it)."""
    if index is None:
        return Items(source, items, start, backbone.transform, decoder), None
    rest = np.arange(start, len(items))
    hits = index.match([items.ids[j] for j in rest], fingerprints[start:], [items.keys[j] for j in rest],
                       source.item_file)
    fresh = np.array([j for j, hit in zip(rest, hits) if hit is None], dtype=np.int64)
    return (Items(source, items.take(fresh), 0, backbone.transform, decoder),
            (fresh, dict(zip(rest.tolist(), hits))))


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
