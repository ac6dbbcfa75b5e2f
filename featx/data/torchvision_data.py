"""torchvision's built-in datasets as a :class:`~featx.data.sources.Source`, and Debian's packaged copies of
Fashion-MNIST and MNIST unpacked where torchvision looks for them (so they work offline)."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..compat import dataset_labels
from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write, did_you_mean, first_line, offline
from .sources import CARVE_RULE, Source, SplitItems

__all__ = ["OFFLINE_DATA", "TRAIN_FLAG_DATASETS", "SPLIT_ARG_DATASETS", "NO_SPLIT_DATASETS", "TorchvisionSource"]

log = logging.getLogger("featx")

#: Where Debian packages put torchvision-format raw files: dataset -> (folder, package).
OFFLINE_DATA = {
    "FashionMNIST": ("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
    "MNIST": ("/usr/share/datasets/mnist", "dataset-mnist"),
}
#: torchvision built-ins whose constructor takes ``train=True/False``.
TRAIN_FLAG_DATASETS = ("FashionMNIST", "MNIST", "KMNIST", "QMNIST", "CIFAR10", "CIFAR100")
#: torchvision built-ins with ``split=``: featx's split -> theirs (official splits only).
SPLIT_ARG_DATASETS = {
    "STL10": {"train": "train", "test": "test"},
    "SVHN": {"train": "train", "test": "test"},
    "Flowers102": {"train": "train", "val": "val", "test": "test"},
    "OxfordIIITPet": {"train": "trainval", "test": "test"},
    "DTD": {"train": "train", "val": "val", "test": "test"},
    "Food101": {"train": "train", "test": "test"},
    "StanfordCars": {"train": "train", "test": "test"},
    "FGVCAircraft": {"train": "train", "val": "val", "test": "test"},
    "Country211": {"train": "train", "val": "valid", "test": "test"},
    "GTSRB": {"train": "train", "test": "test"},
    "PCAM": {"train": "train", "val": "val", "test": "test"},
}
#: torchvision built-ins without official splits: val and test are carved, stratified.
NO_SPLIT_DATASETS = ("EuroSAT", "Caltech101", "Caltech256")


class TorchvisionSource(Source):
    """A torchvision built-in dataset with its official splits; val carved from train when it has none.

    Datasets with ``train=True/False`` (:data:`TRAIN_FLAG_DATASETS`), with ``split=...``
    (:data:`SPLIT_ARG_DATASETS`), or with no split at all (:data:`NO_SPLIT_DATASETS`: val and
    test are carved, stratified). Item ids are ``<official split>/<index>``.
    """

    def __init__(self, dataset: str, *, root: str | os.PathLike, download: bool = False,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, limit: int = 0):
        import torchvision.datasets as tvd

        if dataset in TRAIN_FLAG_DATASETS:
            self._layout = {"train": {"train": True}, "test": {"train": False}}
        elif dataset in SPLIT_ARG_DATASETS:
            self._layout = {ours: {"split": theirs} for ours, theirs in SPLIT_ARG_DATASETS[dataset].items()}
        elif dataset in NO_SPLIT_DATASETS:
            self._layout = {"train": {}}
        else:
            supported = sorted([*TRAIN_FLAG_DATASETS, *SPLIT_ARG_DATASETS, *NO_SPLIT_DATASETS])
            raise FeatxUsageError(f"torchvision dataset {dataset!r} is not supported; "
                                  f"{did_you_mean(dataset, supported, cutoff=0.6)}supported: {', '.join(supported)}")
        self.dataset = dataset
        self.root = Path(root)
        self.download = download
        self.val_fraction = float(val_fraction)  # 0 and 0.0 are one setting: one cache key
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.limit = limit
        self.name = dataset.lower()
        self._cls = getattr(tvd, dataset)
        self._data: dict[str, object] = {}

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
            with atomic_write(target) as tmp, gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    def _load(self, split: str):
        if split not in self._data:
            self._unpack_offline_copy()
            download = self.download and not offline()
            try:
                self._data[split] = self._cls(str(self.root), download=download, **self._layout[split])
            except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError
                where = self.root / self.dataset / "raw" if self.dataset in TRAIN_FLAG_DATASETS else self.root
                hint = "" if download else " (or allow torchvision's download: --download / download = true)"
                if self.dataset in OFFLINE_DATA:
                    folder, pkg = OFFLINE_DATA[self.dataset]
                    hint += f" (or `apt-get install {pkg}`, which puts them in {folder})"
                raise FeatxError(
                    f"dataset {self.dataset} is not available in {where} ({first_line(exc)}): "
                    f"fetch its files as torchvision's {self.dataset} expects them and put them there{hint}"
                ) from exc
        return self._data[split]

    def _find(self) -> dict[str, SplitItems]:
        found = {}
        for split, kwargs in self._layout.items():
            ds = self._load(split)
            labels = _labels_of(ds, self.dataset)
            official = kwargs.get("split", split)
            found[split] = SplitItems(
                keys=[(split, i) for i in range(len(labels))],
                ids=[f"{official}/{i}" for i in range(len(labels))],
                labels=labels,
            )
        first = self._load("train")
        names = getattr(first, "classes", None) or getattr(first, "categories", None)
        n_classes = int(max(int(items.labels.max(initial=-1)) for items in found.values())) + 1
        self.classes = [str(c) for c in names] if names else [str(i) for i in range(n_classes)]
        return found

    def open(self, key) -> Image.Image:
        split, index = key
        return self._load(split)[index][0]

    def describe(self) -> dict:
        record = {
            "kind": "torchvision",
            "dataset": self.dataset,
            "val_fraction": self.val_fraction,
            "val_from": "official" if "val" in self._layout else "train",
            "seed": self.seed,
            "limit": self.limit, "carve_rule": CARVE_RULE,
        }
        if "test" not in self._layout:
            record["test_fraction"] = self.test_fraction
        return record


def _labels_of(ds, name: str) -> np.ndarray:
    """A torchvision dataset's labels without decoding its images."""
    labels = dataset_labels(ds)
    if labels is None:
        raise FeatxError(f"torchvision dataset {name}: cannot list its labels without decoding every image")
    return labels
