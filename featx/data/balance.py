"""A balanced input pipeline: decoding overlaps the forward pass, sized from measured costs.

On a CPU box the decode + preprocess cost ``d`` and the forward cost ``f`` (core-ms per image) decide
where the cores should go. With ``k`` cores decoding and the rest running the backbone, decoding
delivers ``k / d`` images per ms and the forward takes ``(cores - k) / f``; they match at
``k = cores * d / (d + f)`` (rounded up; see :func:`choose`). Small images (Fashion-MNIST, ImageNet-sized
JPEGs: ``d`` is 1/10 of ``f``) give ``k = 0``: decode in the main thread between batches, as before.
Camera photos (``d`` 4x ``f`` for MobileNetV2) get a decoding thread per core.

On a GPU the forward pass costs the host almost nothing, so every core decodes, whatever the image size
(``accelerator=True``). Before this, a GPU run fed the device from DataLoader worker processes, one whole
batch per worker: on an H200 with 16 cores, 12 MP photos ran at 7 images/s against a host decode limit of
124 (one core busy; bench/gpu.sh, docs/benchmarks.md).

Decoding runs in threads while the forward is a real share of the host's work: PIL and torch release the GIL while
they decode, resize and normalise, and threads need no pickling of the items nor copying of the tensors back. When
decoding is all the host does (the forward on an accelerator, or a nearly free model) and the run is long enough
for a steady state, the Python parts of decoding hold the GIL long enough for threads to lose: worker processes
decode then, a batch each (see :data:`PROCESS_MAX_FORWARD_SHARE`).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

__all__ = ["Balance", "PROCESS_MAX_DECODE_MS", "PROCESS_MAX_FORWARD_SHARE", "PROCESS_MIN_ITEMS_PER_CORE", "choose",
           "measure_balance", "threaded_batches", "usable_cores"]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Balance:
    """What the pipeline was set to, and the measured costs it was chosen from."""

    decode_ms: float
    forward_ms: float
    decode_threads: int
    torch_threads: int
    decode_processes: int = 0

    def describe(self) -> str:
        how = (f"{self.decode_processes} decoding processes" if self.decode_processes else
               f"{self.decode_threads} decoding thread{'s' if self.decode_threads != 1 else ''}"
               if self.decode_threads else "decoding between batches")
        return (f"decode {self.decode_ms:.0f} + forward {self.forward_ms:.0f} core-ms per image: {how}, "
                f"{self.torch_threads} torch thread{'s' if self.torch_threads != 1 else ''}")


#: Worker processes decode instead of threads when each would get at least this many items (a process's start
#: is paid back) ...
PROCESS_MIN_ITEMS_PER_CORE = 16
#: ... and the forward costs the host under this share of the decoding (an accelerator's, or a nearly free model) ...
PROCESS_MAX_FORWARD_SHARE = 0.25
#: ... and an item decodes in under this many core-ms: then the Python parts of decoding (opening, converting,
#: normalising), which hold the GIL, are a large share of it and threads lose. Chosen on two measurements on 2
#: cores: ImageNet-sized JPEGs (d = 2-3 ms) with a pooling-only model, threads 0.81 and processes 0.97 of
#: DataLoader(num_workers=2) (bench/bench_feeder.py, 5,120 images); 12 MP photos with the scaled decoder
#: (d = 31-35 ms, the forward 8 ms), threads 0.87-0.89 and processes 0.65 of the machine's limit (bench_camera.py,
#: 64 photos): there the decoding releases the GIL and processes only add their start.
PROCESS_MAX_DECODE_MS = 10.0


def choose(decode_ms: float, forward_ms: float, cores: int, *, accelerator: bool = False, n_items: int = 0) -> Balance:
    """Decoding threads ``k = ceil(cores * d / (d + f))`` (0 when decoding needs under a quarter of the
    cores), and torch keeps every core; with the forward on an ``accelerator``, ``k = cores``. When decoding is
    all the host does (an accelerator, or ``f < PROCESS_MAX_FORWARD_SHARE * d``), an item is cheap to decode
    (``d < PROCESS_MAX_DECODE_MS``: the GIL-held Python share is large) and ``n_items`` give every core
    ``PROCESS_MIN_ITEMS_PER_CORE`` items, ``cores`` worker processes decode instead of threads (a chunk of the batch each,
    :func:`featx.extract.batches.process_batches`).

    The threads oversubscribe the cores on purpose and the OS shares them out: on 2 cores with 12 MP
    photos, giving torch ``cores - k`` threads instead left cores idle whenever one side waited (featx /
    limit 0.67 for MobileNetV2 and ResNet-50 with the scaled decoder, against 0.95 and 0.86 this way;
    ``bench/bench_camera.py``, docs/benchmarks.md)."""
    host_decodes_only = accelerator or forward_ms < PROCESS_MAX_FORWARD_SHARE * decode_ms
    if host_decodes_only and decode_ms < PROCESS_MAX_DECODE_MS and cores > 1 and n_items >= PROCESS_MIN_ITEMS_PER_CORE * cores:
        return Balance(decode_ms, forward_ms, 0, cores, decode_processes=cores)
    if accelerator:
        return Balance(decode_ms, forward_ms, cores, cores)
    share = cores * decode_ms / max(decode_ms + forward_ms, 1e-9)
    k = 0 if share < 0.25 * cores else min(cores, math.ceil(share))
    return Balance(decode_ms, forward_ms, k, cores)


def measure_balance(decode_one: Callable[[int], object], n_items: int, forward_batch: Callable[[], None],
                    batch_size: int, *, cores: int | None = None, sample: int = 4,
                    accelerator: bool = False) -> Balance:
    """Time ``decode_one(i)`` on items 1 to ``sample`` (one thread; item 0 warms up file cache and lazy
    imports) and ``forward_batch()`` (one batch of ``batch_size`` with every core; run twice, the first is a
    warm-up), then :func:`choose`. The caller may keep what ``decode_one`` decoded: each item is decoded once."""
    import torch

    cores = cores or usable_cores()
    n = max(0, min(sample, n_items - 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decode_one(0)
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            decode_one(i)
        d = (time.perf_counter() - t0) / max(n, 1) * 1000
    finally:
        torch.set_num_threads(threads)
    forward_batch()
    t0 = time.perf_counter()
    forward_batch()
    f = (time.perf_counter() - t0) * 1000 * threads / batch_size
    return choose(d, f, cores, accelerator=accelerator, n_items=n_items)


def threaded_batches(get: Callable[[int], object], n: int, batch_size: int, threads: int,
                     collate: Callable[[list], object]) -> Iterator:
    """``collate([get(0), ..., get(batch_size - 1)])``, ... in order, with ``threads`` threads decoding up
    to two batches ahead of the consumer."""
    window = 2 * batch_size + threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featx-decode") as pool:
        pending: deque = deque()
        nxt = 0
        batch: list = []
        while nxt < n or pending:
            while nxt < n and len(pending) < window:
                pending.append(pool.submit(get, nxt))
                nxt += 1
            batch.append(pending.popleft().result())
            if len(batch) == batch_size or (nxt >= n and not pending):
                yield collate(batch)
                batch = []
