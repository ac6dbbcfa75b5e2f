"""Dataset adapters behind one small interface.

A :class:`Source` knows its class names, lists its items per split in a canonical,
deterministic order (``ids``, ``labels`` and the ``keys`` it needs to open them), opens
one item as a PIL image, and gives a fingerprint of its item list for the cache key.

On the command line and in pipeline files a source is one string (see :func:`make_source`):

- ``torchvision:<Name>`` - a torchvision built-in dataset with ``train=True/False`` splits
  (FashionMNIST, MNIST, KMNIST, CIFAR10, CIFAR100). Fashion-MNIST and MNIST are found
  offline in Debian's ``dataset-fashion-mnist`` / ``dataset-mnist`` packages
  (:data:`OFFLINE_DATA`); otherwise torchvision downloads them.
- a directory - an ImageFolder tree, ``root/<class>/*.jpg`` (split deterministically,
  stratified, by ``val_fraction``/``test_fraction`` and ``seed``) or
  ``root/{train,val,test}/<class>/*``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import FeatxError

__all__ = [
    "OFFLINE_DATA",
    "SplitItems",
    "Source",
    "TorchvisionSource",
    "ImageFolderSource",
    "make_source",
    "stratified_split",
]

#: Where Debian packages put torchvision-format raw files: dataset -> (folder, package).
OFFLINE_DATA = {
    "FashionMNIST": ("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
    "MNIST": ("/usr/share/datasets/mnist", "dataset-mnist"),
}
#: torchvision built-ins whose constructor takes ``train=True/False``.
TRAIN_FLAG_DATASETS = ("FashionMNIST", "MNIST", "KMNIST", "CIFAR10", "CIFAR100")
SPLIT_DIRS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitItems:
    """The items of one split, in canonical order."""

    keys: list  # what :meth:`Source.open` takes
    ids: list[str]
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> "SplitItems":
        return SplitItems([self.keys[i] for i in idx], [self.ids[i] for i in idx], self.labels[idx])


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of ``range(len(labels))`` -> (kept, carved), both sorted."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        keep, carve = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise FeatxError(f"cannot carve a stratified {fraction:g} split: {exc}") from None
    return np.sort(keep), np.sort(carve)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Source(ABC):
    """A labelled image collection split into train/val/test."""

    #: folder name under the cache directory
    name: str
    classes: list[str]
    #: keep only the first ``limit`` items of each split (0 = all); for quick trials
    limit: int = 0

    @abstractmethod
    def splits(self) -> dict[str, SplitItems]:
        """Items per split, canonical order; computed once."""

    @abstractmethod
    def open(self, key) -> Image.Image:
        """Load one item as a PIL image."""

    @abstractmethod
    def describe(self) -> dict:
        """A JSON-able record of what this source is (stored in the cache)."""

    def fingerprint(self) -> dict:
        """What determines the items: the description plus every split's ids and labels."""
        splits = self.splits()
        fp = {"describe": self.describe(), "classes": self.classes}
        for split, items in splits.items():
            fp[split] = _digest([items.ids, items.labels.tolist()])
        return fp

    def _carve(self, splits: dict[str, SplitItems], *, val_fraction: float, test_fraction: float, seed: int):
        """Carve val (and test) out of train when the source has none of its own.

        Both fractions are of the train items as found (so 0.1/0.1 of a flat folder gives 80/10/10).
        """
        train = splits["train"]
        if "test" not in splits and test_fraction > 0:
            keep, carve = stratified_split(train.labels, test_fraction, seed)
            splits["test"], train = train.take(carve), train.take(keep)
            val_fraction = val_fraction / (1 - test_fraction)  # fractions are of the whole
        if "val" not in splits and val_fraction > 0:
            keep, carve = stratified_split(train.labels, val_fraction, seed)
            splits["val"], train = train.take(carve), train.take(keep)
        splits["train"] = train
        if self.limit:
            splits = {s: items.take(np.arange(min(self.limit, len(items)))) for s, items in splits.items()}
        return {s: splits[s] for s in SPLIT_DIRS if s in splits}


class TorchvisionSource(Source):
    """A torchvision built-in dataset with official train/test splits; val carved from train."""

    def __init__(self, dataset: str, *, root: str | os.PathLike, download: bool = True,
                 val_fraction: float = 0.1, seed: int = 0, limit: int = 0):
        import torchvision.datasets as tvd

        if dataset not in TRAIN_FLAG_DATASETS or not hasattr(tvd, dataset):
            raise FeatxError(
                f"torchvision dataset {dataset!r} is not supported; supported: {', '.join(TRAIN_FLAG_DATASETS)}"
            )
        self.dataset = dataset
        self.root = Path(root)
        self.download = download
        self.val_fraction = val_fraction
        self.seed = seed
        self.limit = limit
        self.name = dataset.lower()
        self._cls = getattr(tvd, dataset)
        self._data: dict[bool, object] = {}
        self._splits: dict[str, SplitItems] | None = None

    def _unpack_offline_copy(self) -> None:
        """Put Debian's packaged raw files where torchvision looks, so its own code reads them.

        Debian recompresses the ``.gz`` files (their md5 differs from torchvision's list, so
        torchvision's download step would reject them); the decompressed idx files are the
        originals, and torchvision's reader checks their headers and sizes.
        """
        folder, _ = OFFLINE_DATA.get(self.dataset, (None, None))
        if folder is None or not Path(folder).is_dir():
            return
        raw = self.root / self.dataset / "raw"
        for gz in sorted(Path(folder).glob("*.gz")):
            target = raw / gz.stem
            if target.exists():
                continue
            raw.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, target)

    def _load(self, train: bool):
        if train not in self._data:
            from . import backbones

            self._unpack_offline_copy()
            download = self.download and not backbones.offline()
            try:
                self._data[train] = self._cls(str(self.root), train=train, download=download)
            except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError
                where = self.root / self.dataset / "raw"
                hint = ""
                if self.dataset in OFFLINE_DATA:
                    folder, pkg = OFFLINE_DATA[self.dataset]
                    hint = f" (or `apt-get install {pkg}`, which puts them in {folder})"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise FeatxError(
                    f"dataset {self.dataset} is not available in {where} ({first}): "
                    f"fetch its raw files with torchvision's download (online) and put them there{hint}"
                ) from exc
        return self._data[train]

    def splits(self) -> dict[str, SplitItems]:
        if self._splits is None:
            found = {}
            for split, train in (("train", True), ("test", False)):
                ds = self._load(train)
                labels = np.asarray(ds.targets, dtype=np.int64)
                n = len(labels)
                found[split] = SplitItems(
                    keys=[(train, i) for i in range(n)],
                    ids=[f"{split}/{i}" for i in range(n)],
                    labels=labels,
                )
            self.classes = list(self._load(True).classes)
            self._splits = self._carve(found, val_fraction=self.val_fraction, test_fraction=0.0, seed=self.seed)
        return self._splits

    def open(self, key) -> Image.Image:
        train, index = key
        return self._load(train)[index][0]

    def describe(self) -> dict:
        return {
            "kind": "torchvision",
            "dataset": self.dataset,
            "val_fraction": self.val_fraction,
            "val_from": "train",
            "seed": self.seed,
            "limit": self.limit,
        }


class ImageFolderSource(Source):
    """``root/<class>/*`` (split here) or ``root/{train,val,test}/<class>/*`` (split given)."""

    def __init__(self, root: str | os.PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, limit: int = 0):
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.limit = limit
        self.name = self.root.resolve().name.lower() or "images"
        self._splits: dict[str, SplitItems] | None = None
        self.presplit = (self.root / "train").is_dir()

    def _scan(self, folder: Path, class_to_idx: dict[str, int]) -> SplitItems:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        samples.sort(key=lambda s: (s[1], s[0]))
        return SplitItems(
            keys=[p for p, _ in samples],
            ids=[Path(p).relative_to(self.root).as_posix() for p, _ in samples],
            labels=np.array([c for _, c in samples], dtype=np.int64),
        )

    def splits(self) -> dict[str, SplitItems]:
        if self._splits is None:
            from torchvision.datasets.folder import find_classes

            base = self.root / "train" if self.presplit else self.root
            try:
                self.classes, class_to_idx = find_classes(str(base))
            except (FileNotFoundError, OSError) as exc:
                raise FeatxError(f"image folder {self.root}: {exc}") from None
            if self.presplit:
                found = {s: self._scan(self.root / s, class_to_idx) for s in SPLIT_DIRS if (self.root / s).is_dir()}
            else:
                found = {"train": self._scan(base, class_to_idx)}
            if not len(found["train"]):
                raise FeatxError(f"image folder {self.root} holds no images")
            self._splits = self._carve(
                found, val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed
            )
        return self._splits

    def open(self, key) -> Image.Image:
        img = Image.open(key)
        img.load()
        return img

    def fingerprint(self) -> dict:
        fp = super().fingerprint()
        stats = []
        for items in self.splits().values():
            for key in items.keys:
                st = os.stat(key)
                stats.append((st.st_size, st.st_mtime_ns))
        fp["files"] = _digest(stats)
        return fp

    def describe(self) -> dict:
        return {
            "kind": "imagefolder",
            "root": str(self.root.resolve()),
            "layout": "split folders" if self.presplit else "class folders",
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "limit": self.limit,
        }


def make_source(data: str, *, root: str | os.PathLike = "cache/datasets", download: bool = True,
                val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, limit: int = 0) -> Source:
    """Turn a ``--data`` string into a source (see the module docstring)."""
    if data.startswith("torchvision:"):
        return TorchvisionSource(data.split(":", 1)[1], root=root, download=download,
                                 val_fraction=val_fraction, seed=seed, limit=limit)
    if Path(data).is_dir():
        return ImageFolderSource(data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                 limit=limit)
    raise FeatxError(f"data {data!r} is neither an existing directory nor torchvision:<Name>")
