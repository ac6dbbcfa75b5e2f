"""Step 1 of an extraction: what it will do, before anything is read or written.

The items (this rank's block when sharded), the :class:`~featx.cache.spec.EmbeddingSpec` of the run, its cache key
and file, the attributes the cache will carry, and the donor caches whose rows it may copy (``--reuse``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbones.registry import Backbone
from ..cache.spec import EmbeddingSpec, cache_path
from ..data.sources import FileSource, Source, SplitItems
from ..errors import FeatxUsageError
from ..options import DEVICE_HELP, ExtractOptions

__all__ = ["ExtractResult", "ExtractPlan", "spec_for", "cache_key", "plan_extraction", "row_index", "check_device"]


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


def spec_for(source: Source, backbone: Backbone, precision: str = "fp32", decoder: str = "pil") -> EmbeddingSpec:
    """The features ``backbone`` makes of ``source``'s items with these settings."""
    return EmbeddingSpec.of(backbone, precision=precision, decoder=decoder, has_files=isinstance(source, FileSource))


def cache_key(source: Source, backbone: Backbone, precision: str = "fp32", decoder: str = "pil") -> str:
    """Hash of everything that determines the features of ``source`` (16 hex digits, :meth:`EmbeddingSpec.key`)."""
    return spec_for(source, backbone, precision, decoder).key(source.fingerprint())


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
    spec: EmbeddingSpec
    key: str
    path: Path
    attrs: dict
    total: int
    shard: tuple[int, int] | None = None
    classes: list = field(default_factory=list)


def plan_extraction(source: Source, backbone: Backbone, options: ExtractOptions, *, out=None,
                    shard: tuple[int, int] | None = None) -> ExtractPlan:
    """Items, cache key, target file (this rank's shard file when sharded) and its attributes."""
    splits = source.splits()
    spec = spec_for(source, backbone, options.precision, options.decoder)
    key = spec.key(source.fingerprint())
    path = Path(out) if out else cache_path(options.cache_dir, source.name, backbone.name, key)
    attrs = {}
    if shard is not None and shard[1] > 1 and not path.exists():
        from ..cache.shards import check_world, shard_items, shard_path

        rank, world = shard
        check_world(path, world)
        splits = {s: shard_items(items, rank, world) for s, items in splits.items()}
        path = shard_path(path, rank, world)
        attrs["shard"] = f"{rank}/{world}"
    else:
        shard = None
    attrs.update(spec.to_attrs())
    attrs.pop("feature_dim")  # the writer records the dimension of what it writes
    if backbone.meta.get("weights_file"):  # where the local weights were (not part of the key: their sha256 is)
        attrs["weights_file"] = backbone.meta["weights_file"]
    if backbone.meta.get("layer_parts"):  # --layer stages / A,B: which columns are which layer (name, width)
        attrs["layer_parts"] = backbone.meta["layer_parts"]
    attrs.update({
        "cache_key": key,
        "source": source.describe(),
        "memory_format": "channels_last" if options.channels_last else "contiguous",
        "compiled": bool(options.compile),
    })
    return ExtractPlan(splits, spec, key, path, attrs, sum(len(i) for i in splits.values()), shard,
                       list(source.classes))


def row_index(plan: ExtractPlan, options: ExtractOptions, *, default_path: Path | None = None):
    """The donor caches' rows this run may copy (``--reuse``: auto = the complete caches of the same features in
    this cache's folder, then (when ``--out`` named another file) the dataset's cache folder (``default_path``'s),
    then the other datasets' folders of the cache folder (a manifest of the same images is another dataset); a
    file; none); ``None`` when there are none. Sharded runs embed their block (a merge then joins the shards)."""
    from ..cache.reuse import RowIndex, check_donor, find_donors

    choice = str(options.reuse)
    if choice == "none" or plan.shard is not None:
        return None
    if choice == "auto":
        home = Path(options.cache_dir)
        others = sorted(p for p in home.iterdir() if p.is_dir()) if home.is_dir() else []
        folders = dict.fromkeys(p.resolve() for p in (plan.path.parent, getattr(default_path, "parent", None),
                                                      *others) if p is not None)
        donors = list(dict.fromkeys(d for folder in folders for d in find_donors(folder, plan.spec,
                                                                                  exclude=[plan.path])))
    else:
        donors = [check_donor(choice, plan.spec)]
    if not donors:
        return None
    index = RowIndex(donors)
    # a note when nothing was reused is worth it for a donor named with --reuse or beside the output, not for the
    # caches of other datasets that auto mode also looks through
    index.explain = choice != "auto" or any(d.parent.resolve() == plan.path.parent.resolve() for d in donors)
    return index if len(index) else None
