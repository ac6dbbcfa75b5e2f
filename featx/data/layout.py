"""A source from a string (``--data``, a pipeline file) or from a cache's record, and its layout in words."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FeatxError, FeatxUsageError
from ..options import DATASETS_ROOT
from .files import ImageFolderSource, ManifestSource, StanfordDogsSource
from .sources import Source
from .torchvision_data import TorchvisionSource

__all__ = ["make_source", "layout_of", "source_from_record"]


def make_source(data: str, *, root: str | os.PathLike = DATASETS_ROOT, download: bool = False,
                val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, limit: int = 0,
                allow_outside: bool = False) -> Source:
    """Turn a ``--data`` string into a source, detecting the layout.

    ``torchvision:<Name>`` -> :class:`TorchvisionSource`; a ``.csv`` file -> :class:`ManifestSource`;
    a directory with ``lists/train_list.mat`` and ``Images/`` -> :class:`StanfordDogsSource`;
    a ``.tar``, a brace pattern of them or a folder of them -> :class:`~featx.data.webdataset.TarShardSource`;
    any other directory -> :class:`ImageFolderSource`.
    """
    common = {"val_fraction": val_fraction, "seed": seed, "limit": limit}
    if data.startswith("torchvision:"):
        return TorchvisionSource(data.split(":", 1)[1], root=root, download=download, test_fraction=test_fraction,
                                 **common)
    from .webdataset import TarShardSource, is_shard_spec

    if is_shard_spec(data):
        return TarShardSource(data, test_fraction=test_fraction, **common)
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        return ManifestSource(path, test_fraction=test_fraction, allow_outside=allow_outside, **common)
    if path.is_dir():
        if StanfordDogsSource.detect(path):
            return StanfordDogsSource(path, **common)
        return ImageFolderSource(path, test_fraction=test_fraction, **common)
    raise FeatxUsageError(f"data {data!r} is neither torchvision:<Name>, a .csv manifest, tar shards (.tar, a folder "
                          "of them or shards-{000..009}.tar) nor an existing directory")


def layout_of(source: Source) -> str:
    """A short description of the detected layout, as ``featx extract`` reports it."""
    kind = source.describe()["kind"]
    if isinstance(source, ImageFolderSource):
        return f"image folder ({source.describe()['layout']})"
    return {"torchvision": f"torchvision built-in {getattr(source, 'dataset', '')}",
            "manifest": "CSV manifest", "stanford_dogs": "Stanford Dogs (official layout)",
            "webdataset": f"WebDataset tar shards ({len(getattr(source, 'shards', []))})"}.get(kind, kind)


def source_from_record(record: dict, *, root: str | os.PathLike = DATASETS_ROOT) -> Source:
    """The source a cache records (``meta["source"]``), rebuilt from where it was; ``root`` is where
    torchvision datasets are kept (the record does not hold it)."""
    kind = record.get("kind")
    data = {"torchvision": f"torchvision:{record.get('dataset')}", "imagefolder": record.get("root"),
            "manifest": record.get("manifest"), "stanford_dogs": record.get("root"),
            "webdataset": record.get("data")}.get(kind)
    if not data or data.endswith(":None"):
        raise FeatxError(f"the cache's source ({kind}) cannot be rebuilt from its record")
    return make_source(data, root=root, val_fraction=record.get("val_fraction", 0.1),
                       test_fraction=record.get("test_fraction", 0.1), seed=record.get("seed", 0),
                       limit=record.get("limit", 0))
