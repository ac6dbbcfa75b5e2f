"""Sharded extraction: one shard file per rank, merged into the one cache a single process writes.

Each of ``world`` ranks (torchrun processes, on one node or several) takes a contiguous block of
every split's items -- block ``rank`` of ``numpy.array_split(items, world)`` -- and writes it to its
own shard file, ``<stem>.shard-<rank>-of-<world>.h5``, with the same resumable writer as a
single-process run (HDF5 has no safe concurrent writers). Contiguous blocks make the merge a
concatenation: shard 0's rows, then shard 1's, ..., which is the canonical item order.

:func:`merge_shards` runs only when every shard of one world size is complete, checks that they
belong to the same cache key, writes the merged cache through a ``.partial`` file like any other
cache, and deletes the shards once the merged file is in place. :func:`join_shards` (torchrun's default) checks the
same, and writes a small cache whose features are an HDF5 virtual dataset over the shards' (labels, ids and the
rest copied): nothing large is copied, and the shards stay beside it (a cache whose shard is gone is refused).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import numpy as np

from ..errors import FeatxError, FeatxUsageError
from ..data.sources import SplitItems
from .store import PARTIAL_SUFFIX, open_features
from .writer import FeatureWriter

__all__ = ["dist_env", "shard_items", "shard_path", "find_shards", "merge_shards", "join_shards", "init_distributed"]

_SHARD = re.compile(r"\.shard-(\d+)-of-(\d+)\.h5(\.partial)?$")
#: shard rows copied per read while merging
_COPY_ROWS = 4096


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torch.distributed's environment (torchrun sets them)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise FeatxError("RANK / WORLD_SIZE / LOCAL_RANK are not integers; start featx with torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise FeatxError(f"rank {rank} is not within the world size {world}")
    return rank, world, local


def init_distributed(device: str) -> None:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) for the barrier before merging.

    Ranks wait for the slowest one at that barrier, so its timeout is a day, not 30 minutes.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=24))


def shard_items(items: SplitItems, rank: int, world: int) -> SplitItems:
    """Block ``rank`` of ``world`` contiguous blocks of a split (sizes differ by at most one)."""
    return items.take(np.array_split(np.arange(len(items)), world)[rank])


def shard_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{rank}-of-{world}.h5")


def find_shards(path: str | os.PathLike) -> dict[int, dict[int, Path]]:
    """world size -> rank -> shard file (finished ``.h5`` or unfinished ``.h5.partial``) of cache ``path``."""
    path = Path(path)
    found: dict[int, dict[int, Path]] = {}
    if not path.parent.is_dir():
        return found
    for p in path.parent.glob(f"{path.stem}.shard-*"):
        m = _SHARD.search(p.name)
        if m and p.name.startswith(f"{path.stem}.shard-"):
            rank, world = int(m.group(1)), int(m.group(2))
            if m.group(3) and rank in found.get(world, {}):
                continue  # a finished shard wins over a stale partial name
            found.setdefault(world, {})[rank] = p
    return found


def check_world(path: str | os.PathLike, world: int) -> None:
    """Refuse to start ``world`` ranks when shards of another world size exist for this cache."""
    other = sorted(w for w in find_shards(path) if w != world)
    if other:
        raise FeatxError(
            f"{Path(path).name} has shards of a {other[0]}-process run; run with {other[0]} processes to "
            f"finish it (or `featx merge` if it is done), or delete its .shard-* files to start over"
        )


def _complete_shards(path: Path, world: int | None) -> tuple[int, dict[int, Path]]:
    """The world size and ``rank -> shard file`` of a run whose every shard is complete, or the error saying
    which shards are missing or unfinished (and how to finish them)."""
    shards = find_shards(path)
    if not shards:
        raise FeatxUsageError(f"no shards of {path} found (expected {path.stem}.shard-<rank>-of-<world>.h5)")
    if world is None:
        if len(shards) > 1:
            raise FeatxError(f"{path.name} has shards of several runs ({', '.join(f'{w} processes' for w in sorted(shards))}); "
                             "delete the ones you do not want")
        world = next(iter(shards))
    if world not in shards:
        raise FeatxError(f"{path.name} has no shards of a {world}-process run")
    ranks = shards[world]
    missing = [r for r in range(world) if r not in ranks]
    unfinished = [r for r, p in sorted(ranks.items()) if p.name.endswith(PARTIAL_SUFFIX)]
    if missing or unfinished:
        what = "; ".join(x for x in (
            f"shard(s) {', '.join(map(str, missing))} missing" if missing else "",
            f"shard(s) {', '.join(map(str, unfinished))} unfinished" if unfinished else "") if x)
        raise FeatxError(f"cannot merge {path.name}: {what} of {world}; rerun the extraction with {world} "
                         "processes (finished shards are kept, unfinished ones resume)")
    return world, ranks


#: Root attributes a writer sets itself (not copied from a shard).
_AUTO_ATTRS = {"schema_version", "featx_version", "created", "feature_dim", "complete", "shard"}


def _matching_shards(path: Path, world: int | None, key: str | None):
    """``(world, rank -> shard file, their feature sets)`` of complete shards of one cache, or the error why not."""
    world, ranks = _complete_shards(path, world)
    sets = [open_features(ranks[r]) for r in range(world)]
    first = sets[0]
    for r, fs in enumerate(sets):
        if fs.cache_key != (key or first.cache_key):
            raise FeatxError(f"cannot merge {path.name}: shard {r} belongs to cache key {fs.cache_key}, "
                             f"not {key or first.cache_key}")
        if fs.classes != first.classes or fs.splits != first.splits or fs.meta.get("shard") != f"{r}/{world}":
            raise FeatxError(f"cannot merge {path.name}: shard {r} ({ranks[r].name}) does not match shard 0")
    if path.exists():
        raise FeatxError(f"{path} already exists; not overwriting it with a merge")
    return world, ranks, sets


def join_shards(path: str | os.PathLike, *, world: int | None = None, key: str | None = None,
                log=lambda msg: None) -> Path:
    """Join the complete shards of cache ``path`` into ``path`` without copying their features: each split's
    ``features`` is a virtual dataset over the shards' (same folder, named relative to it, so the folder may move
    whole); labels, ids, fingerprints and skipped items are copied. The shards are kept: they hold the features.

    Raises:
        FeatxError: as :func:`merge_shards`; nothing is written then.
    """
    import json

    import h5py

    from .store import partial_path
    from .writer import write_root

    path = Path(path)
    world, ranks, sets = _matching_shards(path, world, key)
    first, dim = sets[0], int(sets[0].feature_dim)
    if any(ranks[r].parent.resolve() != path.parent.resolve() for r in ranks):
        raise FeatxError(f"cannot join {path.name}: its shards must be in its folder ({path.parent})")
    tmp = partial_path(path)
    str_type = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        attrs = {k: v for k, v in first.meta.items() if k not in _AUTO_ATTRS}
        write_root(f, {**attrs, "joined_shards": [ranks[r].name for r in range(world)]}, first.classes, dim)
        for split in first.splits:
            views = [fs[split] for fs in sets]
            n = sum(len(v) for v in views)
            layout = h5py.VirtualLayout(shape=(n, dim), dtype="float32")
            at = 0
            for r, v in enumerate(views):
                if len(v):
                    layout[at:at + len(v)] = h5py.VirtualSource(ranks[r].name, f"{split}/features", shape=(len(v), dim))
                at += len(v)
            g = f.create_group(split)
            g.create_virtual_dataset("features", layout, fillvalue=np.nan)
            g.create_dataset("labels", data=np.concatenate([v.y for v in views]).astype(np.int64), fletcher32=True)
            g.create_dataset("ids", data=np.array([i for v in views for i in v.ids], dtype=object), dtype=str_type)
            g.create_dataset("fingerprints", data=np.array([i for v in views for i in v.fingerprints], dtype=object),
                             dtype=str_type)
            g.attrs["n_committed"] = n
            g.attrs["n_items"] = sum(v.n_items for v in views)
            g.attrs["skipped"] = json.dumps([s for v in views for s in v.skipped])
        f.attrs["complete"] = True
    os.replace(tmp, path)
    log(f"joined {world} shards into {path} (a virtual dataset over them: keep them beside it)")
    return path


def merge_shards(path: str | os.PathLike, *, world: int | None = None, key: str | None = None,
                 log=lambda msg: None) -> Path:
    """Merge the complete shards of cache ``path`` into ``path``; delete the shards after.

    Args:
        path: the final cache file.
        world: the expected number of shards (default: whatever one world size is present).
        key: the expected cache key (default: the shards' own, which must agree).

    Raises:
        FeatxError: no shards, shards of several world sizes, a missing or unfinished shard,
            shards of different caches. Nothing is written then.
    """
    path = Path(path)
    world, ranks, sets = _matching_shards(path, world, key)
    first = sets[0]
    attrs = {k: v for k, v in first.meta.items() if k not in _AUTO_ATTRS}
    sizes = {s: sum(fs[s].n_items for fs in sets) for s in first.splits}
    # fresh: a merge killed midway starts over (the shards hold the data)
    writer = FeatureWriter(path, attrs=attrs, classes=first.classes, split_sizes=sizes,
                           feature_dim=int(first.meta["feature_dim"]), fresh=True)
    with writer:
        for split in first.splits:
            for fs in sets:
                view = fs[split]
                n, ids, labels, fps = len(view), view.ids, view.y, view.fingerprints
                for start in range(0, max(n, 1), _COPY_ROWS):
                    stop = min(n, start + _COPY_ROWS)
                    skipped = [(s["id"], s["reason"]) for s in view.skipped] if stop == n else []
                    writer.append(split, view.rows(start, stop), labels[start:stop], list(ids[start:stop]),
                                  skipped=skipped, fingerprints=list(fps[start:stop]))
        writer.finalize()
    for p in ranks.values():
        p.unlink()
    log(f"merged {world} shards into {path}")
    return path
