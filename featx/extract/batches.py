"""Step 3's machinery: items as a dataset, batches from decoding threads or a DataLoader, rows copied from donor
caches merged in order, device decoding, and the forward pass itself (:func:`embed`)."""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..backbones.registry import Backbone
from ..data.balance import Balance, measure_balance, threaded_batches
from ..data.decoding import image_input, to_rgb
from ..data.device import RawImage, preprocess_batch, raw_from_pil, read_raw
from ..data.sources import FileSource, Source, SplitItems
from ..errors import FeatxError
from ..options import DECODERS, PRECISIONS, ExtractOptions
from ..util import first_line

__all__ = ["Items", "embed", "balance", "embedded", "merged", "BALANCE_MIN_IMAGES"]

log = logging.getLogger("featx")


class Items(Dataset):
    """Items ``start:`` of one split; a failed decode becomes a recorded skip, not a crash."""

    def __init__(self, source: Source, items: SplitItems, start: int, transform: Callable, decoder: str = "pil"):
        """``decoder``: the effective one (:func:`featx.cache.spec.effective_decoder`; ``in-memory`` = the exact
        path for a dataset without files)."""
        self.source, self.items, self.start, self.transform, self.decoder = source, items, start, transform, decoder
        self.on_device = decoder in DECODERS and DECODERS[decoder].on_device

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
            return image_input(key, self.transform, self.decoder, self.source.open), j, ""
        except Exception as exc:  # any decode/transform failure of this one item
            return None, j, f"{type(exc).__name__}: {exc}"


def collate(batch, channels_last: bool = False):
    """Items -> ``(inputs, indices, unreadable)``; with ``channels_last`` the stacked batch is laid out for a
    channels_last CPU forward already (in the decoding process, not the consumer's)."""
    good = [(x, j) for x, j, _ in batch if x is not None]
    bad = [(j, err) for x, j, err in batch if x is None]
    if good and isinstance(good[0][0], RawImage):  # the device path: stacked after preprocessing
        xs = [x for x, _ in good]
    else:
        xs = _stack([x for x, _ in good], channels_last) if good else None
    return xs, [j for _, j in good], bad


def _stack(xs: list, channels_last: bool) -> torch.Tensor:
    """``torch.stack(xs)``; in a DataLoader worker straight into shared memory, as torch's ``default_collate`` does
    (the batch then crosses to the consumer without a copy), and in channels_last layout when asked (one pass)."""
    if torch.utils.data.get_worker_info() is None and not channels_last:
        return torch.stack(xs)
    n, (c, h, w) = len(xs), xs[0].shape
    if torch.utils.data.get_worker_info() is not None:
        out = xs[0].new(xs[0]._typed_storage()._new_shared(n * xs[0].numel(), device=xs[0].device))
    else:
        out = xs[0].new_empty(n * xs[0].numel())
    out = out.as_strided((n, c, h, w), (c * h * w, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1))
    for i, x in enumerate(xs):
        out[i].copy_(x)
    return out


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


def default_workers(device: torch.device) -> int:
    """DataLoader workers when not given: none on a small CPU box, where decoding in the main
    process beat one worker competing with the backbone's threads (62 vs 50 images/s for
    MobileNetV2 on Fashion-MNIST on 2 cores); otherwise enough to keep the device fed."""
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cores <= 2 else min(4, cores // 4)
    return min(8, cores - 1)


#: Chunks of items each decoding process gets at least: the finer the chunks, the sooner the first forward starts and
#: the less the last one waits (64 camera photos on 2 cores: chunks of 4, not 16).
PROCESS_CHUNKS_PER_WORKER = 8
#: Batches each decoding process keeps ready ahead of the consumer.
PREFETCH_BATCHES = 4
#: Below this many images, measuring the pipeline costs more than it can save.
BALANCE_MIN_IMAGES = 64


def balance(ds: "Items | None", backbone: Backbone, options: ExtractOptions, dev: torch.device,
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


def embedded(ds: "Items", options: ExtractOptions, dev: torch.device, balance, decoded: dict, backbone: Backbone,
              model):
    """``(features, item indices, unreadable, 0)`` per batch of ``ds``, in order (indices as ``ds`` returns
    them: positions in its split from its start, or in its own item list)."""
    if not len(ds):
        return
    for xs, idx, bad in batches(ds, options, dev, balance, decoded):
        if isinstance(xs, list):  # --decoder device: decode + preprocess the batch where the model runs
            xs, idx, bad = on_device(xs, idx, bad, backbone, dev)
        yield embed_batch(backbone, xs, dev, options, model), list(idx), list(bad), 0


def merged(embedded, reuse, start: int, n: int, index, batch_size: int, dim: int):
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


def batches(ds: "Items", options: ExtractOptions, dev: torch.device, balance: Balance | None, decoded: dict):
    """Batches of (inputs, indices, unreadable) from decoding threads (a measured balance; ``decoded`` holds
    items already decoded while measuring), or a DataLoader (``--workers N``, GPUs, small runs)."""
    if balance is not None and balance.decode_processes > 0:  # a steady state where the host only decodes
        return process_batches(ds, options.batch_size, balance.decode_processes, dev,
                               channels_last=options.channels_last and dev.type == "cpu")
    if balance is not None and balance.decode_threads > 0:
        def get(i: int):
            return decoded.pop(i) if i in decoded else ds[i]

        return threaded_batches(get, len(ds), options.batch_size, balance.decode_threads, collate)
    workers = 0 if balance is not None else (default_workers(dev) if options.workers < 0 else options.workers)
    return DataLoader(ds, batch_size=options.batch_size, num_workers=workers, collate_fn=collate,
                      pin_memory=dev.type == "cuda")


def process_batches(ds: "Items", batch_size: int, workers: int, dev: torch.device, *, channels_last: bool):
    """Batches decoded by ``workers`` processes (a DataLoader), each process a chunk of consecutive items at a time:
    the batch, or a divisor of it small enough that every process gets :data:`PROCESS_CHUNKS_PER_WORKER` chunks (512
    camera photos in batches of 64 would otherwise keep 8 of 16 processes busy, and the first forward would wait
    for a whole batch to be decoded by one process); chunks are joined into batches here."""
    most = max(1, len(ds) // (PROCESS_CHUNKS_PER_WORKER * workers))
    chunk = max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= most)
    loader = DataLoader(ds, batch_size=chunk, num_workers=workers, pin_memory=dev.type == "cuda",
                        collate_fn=functools.partial(collate, channels_last=channels_last),
                        prefetch_factor=PREFETCH_BATCHES * max(1, batch_size // chunk))
    if chunk == batch_size:
        return loader
    return _joined(loader, batch_size // chunk)


def _joined(loader, k: int):
    """Every ``k`` consecutive chunks of ``loader`` as one batch (inputs concatenated, or listed for the device
    path)."""
    parts: list = []
    for part in loader:
        parts.append(part)
        if len(parts) == k:
            yield _join(parts)
            parts = []
    if parts:
        yield _join(parts)


def _join(parts: list):
    inputs = [xs for xs, _, _ in parts if xs is not None]
    if inputs and isinstance(inputs[0], list):
        xs = [x for chunk in inputs for x in chunk]
    else:
        xs = torch.cat(inputs) if inputs else None
    return xs, [j for _, idx, _ in parts for j in idx], [b for _, _, bad in parts for b in bad]


def on_device(raws, idx, bad, backbone: Backbone, dev: torch.device):
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


def embed_batch(backbone: Backbone, xs, dev: torch.device, options: ExtractOptions, model) -> np.ndarray:
    if xs is None:  # every item of the batch was unreadable
        return np.zeros((0, backbone.feature_dim), np.float32)
    try:
        return embed(backbone, xs, device=dev, precision=options.precision, channels_last=options.channels_last,
                     model=model, pad_to=options.batch_size if options.compile else 0)
    except Exception as exc:
        if not options.compile:
            raise
        raise FeatxError(f"torch.compile failed ({first_line(exc)}); run without compiling "
                         "(it needs a C++ compiler on CPU)", param="compile") from None
