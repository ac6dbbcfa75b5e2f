"""Dataset adapters behind one small interface.

A :class:`Source` knows its class names, lists its items per split in a canonical,
deterministic order (``ids``, ``labels`` and the ``keys`` it needs to open them), opens
one item as a PIL image, and gives a fingerprint of its item list for the cache key.

On the command line and in pipeline files a source is one string (see :func:`make_source`):

- ``torchvision:<Name>`` - a torchvision built-in dataset with ``train=True/False`` splits
  (FashionMNIST, MNIST, KMNIST, CIFAR10, CIFAR100). Fashion-MNIST and MNIST are found
  offline in Debian's ``dataset-fashion-mnist`` / ``dataset-mnist`` packages
  (:data:`OFFLINE_DATA`); otherwise torchvision downloads them.
- ``torchvision:<Name>`` for built-ins with ``split=`` (STL10, SVHN, Flowers102, OxfordIIITPet, DTD,
  Food101, StanfordCars, FGVCAircraft, Country211, GTSRB, PCAM) or with no split at all (EuroSAT,
  Caltech101, Caltech256: val and test carved).
- a directory - an ImageFolder tree, ``root/<class>/*.jpg`` (split deterministically,
  stratified, by ``val_fraction``/``test_fraction`` and ``seed``) or
  ``root/{train,val,test}/<class>/*``.
- a ``.csv`` manifest - ``path,label[,split]`` rows (:class:`ManifestSource`).
- a Stanford Dogs root - the official ``Images/`` + ``lists/{train,test}_list.mat`` layout
  (:class:`StanfordDogsSource`).
"""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import json
import logging
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..compat import dataset_labels
from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write, did_you_mean, first_line, offline
from .decoding import open_image

log = logging.getLogger("featx")

__all__ = [
    "OFFLINE_DATA",
    "SplitItems",
    "Source",
    "TorchvisionSource",
    "FileSource",
    "ImageFolderSource",
    "ManifestSource",
    "StanfordDogsSource",
    "make_source",
    "layout_of",
    "carve_splits", "split_hash", "CARVE_RULE",
    "stratified_sample",
]

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


#: The carving rule's version, recorded in every source's description (and so in the cache key).
#: 2: each item's split is a function of its id and the seed (see :func:`carve_splits`); 1 (before,
#: unrecorded): scikit-learn's stratified ``train_test_split`` of the whole list, which moved items between
#: splits whenever the list changed.
CARVE_RULE = 2


def split_hash(ids, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id, fixed by the id and the seed alone (the first 8 bytes of
    sha256(``"<seed>:<id>"``))."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2.0**64
                     for i in ids], dtype=np.float64)


def carve_splits(ids, labels: np.ndarray, fractions: dict[str, float], seed: int) -> tuple[dict, list]:
    """Indices of the items that go to each carved split (``fractions``: split -> fraction, in order) and to
    ``train`` (the rest), plus ``(class, items)`` for each class too small to be carved.

    The rule (stable as the data grows): an item goes to the first carved split whose band of [0, 1) holds
    its :func:`split_hash` (bands of the given widths, laid end to end), else to train. Adding or removing
    items never moves another item. A class whose items all miss a band still gets one item in that split,
    the one with the lowest hash left in train, when the class has enough items for one in train and in
    every carved split; a smaller class stays whole in train, with a note.
    """
    u = split_hash(ids, seed)
    names = [s for s, f in fractions.items() if f > 0]
    assign = np.full(len(u), len(names), dtype=np.int64)  # len(names) = train
    lo = 0.0
    for k, name in enumerate(names):
        hi = lo + fractions[name]
        assign[(u >= lo) & (u < hi) & (assign == len(names))] = k
        lo = hi
    notes = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        if len(members) < len(names) + 1:
            assign[members] = len(names)
            notes.append((int(c), len(members)))
            continue
        for k in range(len(names)):
            if not (assign[members] == k).any():
                in_train = members[assign[members] == len(names)]
                if len(in_train) > 1:
                    assign[in_train[np.argmin(u[in_train])]] = k
    out = {name: np.flatnonzero(assign == k) for k, name in enumerate(names)}
    out["train"] = np.flatnonzero(assign == len(names))
    return out, notes


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``n`` labelled (``>= 0``) entries of ``labels``, stratified by label (all of
    them when there are fewer; a plain seeded random sample when a class has a single item)."""
    rows = np.flatnonzero(labels >= 0)
    if len(rows) <= n:
        return rows
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(rows, train_size=n, stratify=labels[rows], random_state=seed)
    except ValueError:  # a class with a single item cannot be stratified
        keep = np.random.default_rng(seed).choice(rows, size=n, replace=False)
    return np.sort(keep)


def in_memory_fingerprint(description: dict) -> str:
    """The per-item content fingerprint of an in-memory dataset (its items never change): its kind and name."""
    return f"{description.get('kind')}:{description.get('dataset', '')}"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Source(ABC):
    """A labelled image collection split into train/val/test."""

    #: folder name under the cache directory
    name: str
    #: split -> items carved from train (set by :meth:`splits` when it carved any)
    carved: dict = {}
    classes: list[str]
    #: keep at most ``limit`` items of each split, a stratified seeded sample (0 = all); for quick trials
    limit: int = 0
    #: fractions of train carved out as val / test when the source has no such split of its own
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    #: set by :meth:`sampled`: the stratified sample this source was cut to (part of its fingerprint)
    sample: dict | None = None
    _splits: dict[str, SplitItems] | None = None

    def sampled(self, n: int, *, seed: int = 0) -> "Source":
        """A copy holding one split, ``train``: a stratified sample of at most ``n`` labelled train items
        (all of them when there are fewer), in canonical order. Its fingerprint names the sample."""
        items = self.splits()["train"]
        idx = stratified_sample(items.labels, n, seed)
        return self._with_splits({"train": items.take(idx)}, {"n": int(n), "seed": int(seed), "of": "train"})

    def restricted(self, ids: dict[str, list[str]], *, record: dict) -> "Source":
        """A copy holding, per split, only the items with these ids (in the order given); ``record`` names the
        subset in its fingerprint. Raises ``KeyError`` with an id the source does not have."""
        splits = self.splits()
        out = {}
        for split, wanted in ids.items():
            index = {item_id: k for k, item_id in enumerate(splits[split].ids)}
            out[split] = splits[split].take(np.asarray([index[i] for i in wanted], dtype=np.int64))
        return self._with_splits(out, record)

    def _with_splits(self, splits: dict[str, SplitItems], record: dict) -> "Source":
        out = copy.copy(self)
        out._splits = splits
        out.sample = record
        return out

    def splits(self) -> dict[str, SplitItems]:
        """Items per split, canonical order; computed once (sets :attr:`classes`)."""
        if self._splits is None:
            self._splits = self._carve(self._find())
        return self._splits

    @abstractmethod
    def _find(self) -> dict[str, SplitItems]:
        """The splits as the source has them (at least ``train``); sets :attr:`classes`."""

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
        if self.sample:  # only when set, so that the keys of whole sources stay as they were
            fp["sample"] = self.sample
        for split, items in splits.items():
            fp[split] = _digest([items.ids, items.labels.tolist()])
        return fp

    def item_fingerprints(self, items: SplitItems) -> list[str]:
        """What identifies each item's content beside its id, as recorded per row in a cache (row reuse across
        caches compares it): the source's description for in-memory datasets, whose items never change;
        file sources override it with each file's size and modification time."""
        return [in_memory_fingerprint(self.describe())] * len(items)

    def _carve(self, splits: dict[str, SplitItems]) -> dict[str, SplitItems]:
        """Carve val (and test) out of train when the source has none of its own (:func:`carve_splits`: by a
        hash of each item's id and the seed, stable as the data grows), then apply the limit.

        Both fractions are of the train items as found (so 0.1/0.1 of a flat folder gives about 80/10/10).
        """
        train = splits["train"]
        fractions = {"test": self.test_fraction if "test" not in splits else 0.0,
                     "val": self.val_fraction if "val" not in splits else 0.0}
        fractions = {s: f for s, f in fractions.items() if f > 0}
        if fractions:
            if sum(fractions.values()) >= 1:
                raise FeatxUsageError(f"val and test fractions add up to {sum(fractions.values()):g}: nothing would "
                                      "be left to train on; use fractions that add up to less than 1")
            parts, notes = carve_splits(train.ids, train.labels, fractions, self.seed)
            if notes:
                names = list(self.classes or [])
                small = ", ".join(f"{names[c] if c < len(names) else c!r} ({n})" for c, n in notes[:5])
                log.info(f"note: {len(notes)} class{'es' if len(notes) > 1 else ''} with fewer than "
                         f"{len(fractions) + 1} items kept whole in train, not carved into {' and '.join(fractions)}: "
                         f"{small}{', ...' if len(notes) > 5 else ''} (give explicit train/val/test folders to "
                         "choose yourself)")
            for split in fractions:
                splits[split] = train.take(parts[split])
            splits["train"] = train.take(parts["train"])
            self.carved = {s: len(parts[s]) for s in fractions}
        if self.limit:  # a stratified sample, so that a quick trial still holds every class it can
            splits = {s: items.take(stratified_sample(items.labels, self.limit, self.seed)
                                    if (items.labels >= 0).all() else np.arange(min(self.limit, len(items))))
                      for s, items in splits.items()}
        return {s: splits[s] for s in SPLIT_DIRS if s in splits}


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
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
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


class FileSource(Source):
    """A source whose items are image files (``keys`` are paths)."""

    def open(self, key) -> Image.Image:
        return open_image(key)

    def fingerprint(self) -> dict:
        """Adds every file's size and modification time: an edited image changes the key."""
        fp = super().fingerprint()
        stats = []
        for items in self.splits().values():
            for key in items.keys:
                try:
                    st = os.stat(key)
                    stats.append((st.st_size, st.st_mtime_ns))
                except OSError:  # gone since it was listed: it will be a recorded skip
                    stats.append((-1, -1))
        fp["files"] = _digest(stats)
        return fp

    def item_fingerprints(self, items: SplitItems) -> list[str]:
        """``"<size>-<mtime_ns>"`` of each file (``"missing"`` for one gone since it was listed)."""
        out = []
        for key in items.keys:
            try:
                st = os.stat(key)
                out.append(f"{st.st_size}-{st.st_mtime_ns}")
            except OSError:
                out.append("missing")
        return out


class ImageFolderSource(FileSource):
    """``root/<class>/*`` (split here) or ``root/{train,val,test}/<class>/*`` (split given)."""

    def __init__(self, root: str | os.PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, limit: int = 0):
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.limit = limit
        self.name = self.root.resolve().name.lower() or "images"
        self.presplit = (self.root / "train").is_dir()

    def _scan(self, folder: Path, class_to_idx: dict[str, int]) -> SplitItems:
        samples = [(p, c) for name, c in class_to_idx.items() for p in image_files(folder / name)]
        samples.sort(key=lambda s: (s[1], s[0]))
        return SplitItems(
            keys=[p for p, _ in samples],
            ids=[safe_id(os.path.relpath(p, self.root)) for p, _ in samples],
            labels=np.array([c for _, c in samples], dtype=np.int64),
        )

    def _find(self) -> dict[str, SplitItems]:
        base = self.root / "train" if self.presplit else self.root
        try:
            self.classes = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
        except OSError as exc:
            raise FeatxError(f"image folder {self.root}: {exc.strerror or exc}: {base}") from None
        if not self.classes:
            raise FeatxError(f"image folder {base} has no class folders")
        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        if self.presplit:
            found = {s: self._scan(self.root / s, class_to_idx) for s in SPLIT_DIRS if (self.root / s).is_dir()}
        else:
            found = {"train": self._scan(base, class_to_idx)}
        if not len(found["train"]):
            raise FeatxError(f"image folder {self.root} holds no images")
        return found

    def describe(self) -> dict:
        return {
            "kind": "imagefolder",
            "root": str(self.root.resolve()),
            "layout": "split folders" if self.presplit else "class folders",
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "limit": self.limit, "carve_rule": CARVE_RULE,
        }


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def safe_id(path: str) -> str:
    """A POSIX relative path as valid UTF-8 text: bytes of a non-UTF-8 file name become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").replace(os.sep, "/")


def image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, following links, each real folder once so a
    symlink loop ends), skipping hidden files and folders (``.DS_Store``, ``._x.jpg``, ``.git``).
    Files without an image extension (``Thumbs.db``, ``notes.txt``) are not images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    extensions = (*IMG_EXTENSIONS, ".gif")  # torchvision's list, plus GIF (its first frame)
    seen: set[str] = set()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(extensions)]
    return found


def _require_files(where, paths) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FeatxError(f"{where}: {len(missing)} listed file(s) do not exist, e.g. {missing[0]}")


class ManifestSource(FileSource):
    """A CSV manifest: ``path,label[,split]`` per row, paths relative to the manifest's folder.

    A header row ``path,label[,split]`` is optional. An empty label or ``-1`` marks an
    unlabelled row (label -1). ``split`` is ``train``, ``val`` or ``test``; when no row has a
    split, val and test are carved from all rows as for a flat image folder. Class names are
    the distinct labels, sorted (numerically when all are integers).
    """

    def __init__(self, manifest: str | os.PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, limit: int = 0, allow_outside: bool = False):
        self.manifest = Path(manifest)
        self.val_fraction, self.test_fraction, self.seed, self.limit = val_fraction, test_fraction, seed, limit
        self.allow_outside = allow_outside
        self.name = self.manifest.stem.lower()

    def _rows(self) -> list[tuple[int, str, str, str]]:
        try:
            with open(self.manifest, newline="", encoding="utf-8") as f:
                rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if row and any(c.strip() for c in row)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise FeatxError(f"manifest {self.manifest} cannot be read: {exc}") from None
        if rows and [c.strip().lower() for c in rows[0][1]] in (["path", "label"], ["path", "label", "split"]):
            rows = rows[1:]
        out = []
        for n, row in rows:
            if len(row) not in (2, 3):
                raise FeatxError(f"{self.manifest}:{n}: expected path,label[,split], got {len(row)} fields")
            path, label = row[0].strip(), row[1].strip()
            split = row[2].strip().lower() if len(row) == 3 else ""
            if not path:
                raise FeatxError(f"{self.manifest}:{n}: empty path")
            if split not in ("", *SPLIT_DIRS):
                raise FeatxError(f"{self.manifest}:{n}: unknown split {row[2]!r} (use train, val or test)")
            out.append((n, path, "" if label in ("", "-1") else label, split))
        if not out:
            raise FeatxError(f"manifest {self.manifest} lists no images")
        return out

    def _find(self) -> dict[str, SplitItems]:
        rows = self._rows()
        base = self.manifest.parent.resolve()
        names = sorted({label for _, _, label, _ in rows if label})
        if names and all(_is_int(n) for n in names):
            names.sort(key=int)
        self.classes = names
        index = {name: i for i, name in enumerate(names)}
        with_split = {split for *_, split in rows}
        if "" in with_split and len(with_split) > 1:
            n = next(n for n, *_, split in rows if not split)
            raise FeatxError(f"{self.manifest}:{n}: no split, but other rows have one; give every row a split or none")
        grouped: dict[str, list] = {}
        for n, path, label, split in rows:
            try:
                full = (base / path).resolve()
            except (ValueError, OSError) as exc:  # a NUL byte, a link loop, a name too long
                raise FeatxError(f"{self.manifest}:{n}: path {path!r} is not usable ({exc})") from None
            if not self.allow_outside and not full.is_relative_to(base):
                raise FeatxError(f"{self.manifest}:{n}: {path} is outside the manifest's folder {base}")
            grouped.setdefault(split or "train", []).append((str(full), path, index.get(label, -1)))
        _require_files(f"manifest {self.manifest}", [k for g in grouped.values() for k, _, _ in g])
        found = {
            split: SplitItems([k for k, _, _ in g], [i for _, i, _ in g], np.array([y for *_, y in g], dtype=np.int64))
            for split, g in grouped.items()
        }
        if "train" not in found:
            raise FeatxError(f"manifest {self.manifest} has no train rows")
        return found

    def describe(self) -> dict:
        return {
            "kind": "manifest",
            "manifest": str(self.manifest.resolve()),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "limit": self.limit, "carve_rule": CARVE_RULE,
        }


class StanfordDogsSource(FileSource):
    """Stanford Dogs in its official layout (Khosla et al. 2011).

    ``Images/<wnid>-<breed>/*.jpg`` and ``lists/train_list.mat`` / ``lists/test_list.mat``
    (``file_list`` relative to ``Images/``, ``labels`` 1..120 in the sorted order of the
    breed folders). 12,000 train / 8,580 test images; val is carved from train. Class names are
    the breeds (``Chihuahua``, ``Japanese_spaniel``, ...).
    """

    LISTS = {"train": "train_list.mat", "test": "test_list.mat"}

    def __init__(self, root: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0, limit: int = 0):
        self.root = Path(root)
        self.val_fraction, self.seed, self.limit = val_fraction, seed, limit
        self.name = "stanford_dogs"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "lists" / "train_list.mat").is_file() and (root / "Images").is_dir()

    def _find(self) -> dict[str, SplitItems]:
        from scipy.io import loadmat

        folders = sorted(d.name for d in (self.root / "Images").iterdir() if d.is_dir())
        self.classes = [f.split("-", 1)[1] if "-" in f else f for f in folders]
        found = {}
        for split, name in self.LISTS.items():
            path = self.root / "lists" / name
            try:
                mat = loadmat(str(path))
                files = [str(np.ravel(entry)[0]) if np.size(entry) else "" for entry in np.ravel(mat["file_list"])]
                labels = np.ravel(mat["labels"]).astype(np.int64) - 1
            except (OSError, KeyError, ValueError, TypeError, NotImplementedError) as exc:
                raise FeatxError(f"Stanford Dogs list {path} cannot be read: {exc}") from None
            if len(files) != len(labels):
                raise FeatxError(f"Stanford Dogs list {path}: {len(files)} files but {len(labels)} labels")
            for f, y in zip(files, labels):
                if not 0 <= y < len(folders) or f.split("/", 1)[0] != folders[y]:
                    raise FeatxError(f"Stanford Dogs list {path}: {f} is labelled {y + 1}, which is not its folder")
            keys = [str(self.root / "Images" / f) for f in files]
            _require_files(f"Stanford Dogs {split}", keys)
            found[split] = SplitItems(keys, files, labels)
        return found

    def describe(self) -> dict:
        return {"kind": "stanford_dogs", "root": str(self.root.resolve()), "val_fraction": self.val_fraction,
                "val_from": "train", "seed": self.seed, "limit": self.limit, "carve_rule": CARVE_RULE}


def make_source(data: str, *, root: str | os.PathLike = "cache/datasets", download: bool = False,
                val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, limit: int = 0,
                allow_outside: bool = False) -> Source:
    """Turn a ``--data`` string into a source, detecting the layout.

    ``torchvision:<Name>`` -> :class:`TorchvisionSource`; a ``.csv`` file -> :class:`ManifestSource`;
    a directory with ``lists/train_list.mat`` and ``Images/`` -> :class:`StanfordDogsSource`;
    any other directory -> :class:`ImageFolderSource`.
    """
    common = {"val_fraction": val_fraction, "seed": seed, "limit": limit}
    if data.startswith("torchvision:"):
        return TorchvisionSource(data.split(":", 1)[1], root=root, download=download, test_fraction=test_fraction,
                                 **common)
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        return ManifestSource(path, test_fraction=test_fraction, allow_outside=allow_outside, **common)
    if path.is_dir():
        if StanfordDogsSource.detect(path):
            return StanfordDogsSource(path, **common)
        return ImageFolderSource(path, test_fraction=test_fraction, **common)
    raise FeatxUsageError(f"data {data!r} is neither torchvision:<Name>, a .csv manifest nor an existing directory")


def layout_of(source: Source) -> str:
    """A short description of the detected layout, as ``featx extract`` reports it."""
    kind = source.describe()["kind"]
    if isinstance(source, ImageFolderSource):
        return f"image folder ({source.describe()['layout']})"
    return {"torchvision": f"torchvision built-in {getattr(source, 'dataset', '')}",
            "manifest": "CSV manifest", "stanford_dogs": "Stanford Dogs (official layout)"}.get(kind, kind)
