"""Image shards in the WebDataset layout (tar files, the format of LAION-style collections) as a source.

``--data`` takes one ``.tar``, a folder of ``.tar`` files, or a brace pattern (``shards-{000..009}.tar``, WebDataset's
own spelling). In a shard, the members that share a key (the path up to the first dot of the file name) are one
sample: ``KEY.jpg`` (or ``.jpeg``, ``.png``, ``.webp``) with its label in ``KEY.cls`` (an integer, or a class name)
or ``KEY.json`` (``{"label": ...}`` or ``{"cls": ...}``); a sample without a label is an unlabelled row. Members are
read where they lie in the shard (the tar header gives their offset): nothing is unpacked. Val and test are carved
from the samples by a hash of each id, as for a flat image folder. Ids are ``<shard file>/<key>``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FeatxError, FeatxUsageError
from .decoding import open_image
from .sources import Source, SplitItems, _digest

__all__ = ["IMAGE_EXTENSIONS", "TarShardSource", "expand_braces", "is_shard_spec", "shard_files"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``shards-{000..009}.tar`` -> the ten names (zero-padded as written); several ranges multiply."""
    m = _BRACES.search(pattern)
    if not m:
        return [pattern]
    lo, hi = int(m[1]), int(m[2])
    width = len(m[1]) if m[1].startswith("0") else 0
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [name for i in range(lo, hi + 1) for name in expand_braces(f"{head}{i:0{width}d}{tail}")]


def is_shard_spec(data: str) -> bool:
    """Whether ``--data`` names tar shards: a ``.tar`` file or pattern, or a folder holding ``.tar`` files only."""
    if data.endswith(".tar") or _BRACES.search(data):
        return True
    path = Path(data)
    if not path.is_dir():
        return False
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    return bool(entries) and all(e.is_file() and e.name.endswith(".tar") for e in entries)


def shard_files(data: str) -> list[Path]:
    """The shard files ``data`` names, in order; a usage error for a missing one."""
    path = Path(data)
    files = sorted(path.glob("*.tar")) if path.is_dir() else [Path(p) for p in expand_braces(data)]
    missing = [str(p) for p in files if not p.is_file()]
    if not files or missing:
        raise FeatxUsageError(f"data {data!r}: {'shard ' + missing[0] + ' does not exist' if missing else 'no shards'}")
    return files


def _key(key: str) -> tuple[str, int, int]:
    shard, offset, size = key.rsplit("::", 2)
    return shard, int(offset), int(size)


class TarShardSource(Source):
    """Samples of WebDataset tar shards (see the module doc)."""

    def __init__(self, data: str, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 limit: int = 0):
        self.data = data
        self.shards = [p.resolve() for p in shard_files(data)]
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.seed, self.limit = seed, limit
        self.name = re.sub(r"[^a-z0-9]+", "-", (Path(data).stem if not Path(data).is_dir() else Path(data).name)
                           .lower().split("{")[0]).strip("-") or "shards"
        self._stamps: dict[str, str] = {}

    def _samples(self, shard: Path):
        """``(key, image member, label text or None)`` of every sample of one shard, in the shard's order."""
        images, labels, order = {}, {}, []
        try:
            with tarfile.open(shard, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    if "." not in base or base.startswith("."):
                        continue
                    key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
                    ext = base.split(".", 1)[1].lower()
                    if ext in IMAGE_EXTENSIONS and key not in images:
                        images[key] = member
                        order.append(key)
                    elif ext in ("cls", "json") and member.size < 1 << 16:
                        labels[key] = (ext, tar.extractfile(member).read().decode("utf-8", "replace").strip())
        except (tarfile.TarError, OSError) as exc:
            raise FeatxError(f"shard {shard} is not a readable tar file: {exc}") from None
        for key in order:
            yield key, images[key], _label(labels.get(key))

    def _find(self) -> dict[str, SplitItems]:
        keys, ids, texts = [], [], []
        for shard in self.shards:
            for key, member, label in self._samples(shard):
                keys.append(f"{shard}::{member.offset_data}::{member.size}")
                ids.append(f"{shard.name}/{key}")
                texts.append(label)
                self._stamps[keys[-1]] = f"tar:{member.size}-{member.mtime}"
        if not keys:
            raise FeatxError(f"data {self.data!r}: the shards hold no images ({', '.join(IMAGE_EXTENSIONS)})")
        named = sorted({t for t in texts if t is not None}, key=lambda t: (not t.lstrip("-").isdigit(),
                                                                            int(t) if t.lstrip("-").isdigit() else 0, t))
        self.classes = named
        index = {c: i for i, c in enumerate(named)}
        labels = np.array([index[t] if t is not None else -1 for t in texts], dtype=np.int64)
        return {"train": SplitItems(keys=keys, ids=ids, labels=labels)}

    def open(self, key) -> Image.Image:
        shard, offset, size = _key(key)
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return open_image(io.BytesIO(data))

    def item_fingerprints(self, items: SplitItems, how: str = "stat") -> list[str]:
        """The member's size and modification time from its tar header (``content``: a SHA-256 of its bytes)."""
        if how == "content":
            import hashlib

            out = []
            for key in items.keys:
                shard, offset, size = _key(key)
                with open(shard, "rb") as f:
                    f.seek(offset)
                    out.append("sha256:" + hashlib.sha256(f.read(size)).hexdigest())
            return out
        if not self._stamps:
            self._find()
        return [self._stamps.get(k, "missing") for k in items.keys]

    def fingerprint(self) -> dict:
        fp = super().fingerprint()
        fp["shards"] = _digest([(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in self.shards])
        return fp

    def describe(self) -> dict:
        return {"kind": "webdataset", "data": self.data, "shards": [str(p) for p in self.shards], **self._carving()}


def _label(entry) -> str | None:
    """A sample's label text from its ``.cls`` or ``.json`` member (``None``: unlabelled)."""
    if entry is None:
        return None
    ext, text = entry
    if ext == "json":
        try:
            value = json.loads(text)
        except ValueError:
            return None
        value = value.get("label", value.get("cls")) if isinstance(value, dict) else value
        return None if value is None or value == -1 else str(value)
    return None if text in ("", "-1") else text
