"""The source interface every dataset adapter implements, and how splits are carved and sampled.

The adapters: :mod:`featx.data.torchvision_data` (torchvision built-ins), :mod:`featx.data.files` (image folders,
CSV manifests, Stanford Dogs); :mod:`featx.data.layout` turns a ``--data`` string or a cache's record into one.

A :class:`Source` knows its class names, lists its items per split in a canonical,
deterministic order (``ids``, ``labels`` and the ``keys`` it needs to open them), opens
one item as a PIL image, and gives a fingerprint of its item list for the cache key.

On the command line and in pipeline files a source is one string (see :func:`featx.data.layout.make_source`):

- ``torchvision:<Name>`` - a torchvision built-in dataset with ``train=True/False`` splits
  (FashionMNIST, MNIST, KMNIST, CIFAR10, CIFAR100). Fashion-MNIST and MNIST are found
  offline in Debian's ``dataset-fashion-mnist`` / ``dataset-mnist`` packages
  (:data:`featx.data.torchvision_data.OFFLINE_DATA`); otherwise torchvision downloads them.
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
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import FeatxUsageError
from .decoding import open_image

log = logging.getLogger("featx")

__all__ = ["SplitItems", "Source", "FileSource", "carve_splits", "split_hash", "CARVE_RULE", "stratified_sample",
           "in_memory_fingerprint", "SPLIT_DIRS"]

SPLIT_DIRS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitItems:
    """The items of one split, in canonical order."""

    keys: list  # what :meth:`Source.open` takes
    ids: list[str]
    labels: np.ndarray  # int64
    #: multi-label sources: each item's class indices (a sorted tuple; ``None`` unlabelled); ``labels`` are -1 then
    label_sets: list | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> "SplitItems":
        return SplitItems([self.keys[i] for i in idx], [self.ids[i] for i in idx], self.labels[idx],
                          None if self.label_sets is None else [self.label_sets[i] for i in idx])


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

    def _carving(self) -> dict:
        """The settings that decide the splits and their size, as every description records them."""
        return {"val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "seed": self.seed,
                "limit": self.limit, "carve_rule": CARVE_RULE}

    def fingerprint(self) -> dict:
        """What determines the items: the description plus every split's ids and labels."""
        splits = self.splits()
        fp = {"describe": self.describe(), "classes": self.classes}
        if self.sample:  # only when set, so that the keys of whole sources stay as they were
            fp["sample"] = self.sample
        for split, items in splits.items():
            fp[split] = _digest([items.ids, items.labels.tolist()] + ([items.label_sets]
                                                                      if items.label_sets is not None else []))
        return fp

    def item_fingerprints(self, items: SplitItems, how: str = "stat") -> list[str]:
        """What identifies each item's content beside its id, as recorded per row in a cache (row reuse across
        caches compares it): the source's description for in-memory datasets, whose items never change;
        file sources override it with each file's size and modification time, or a hash of its bytes."""
        return [in_memory_fingerprint(self.describe())] * len(items)

    def item_file(self, key) -> str | None:
        """The real file of the item ``key``, for sources of files (``None``: not a file)."""
        return None

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

    def item_fingerprints(self, items: SplitItems, how: str = "stat") -> list[str]:
        """``"<size>-<mtime_ns>"`` of each file (``how="stat"``, one stat per file), or ``"sha256:<hex>"`` of its
        bytes (``how="content"``: reads every file, and matches a copied tree whose modification times are new);
        ``"missing"`` for one gone since it was listed."""
        out = []
        for key in items.keys:
            try:
                if how == "content":
                    out.append(content_fingerprint(key))
                else:
                    st = os.stat(key)
                    out.append(f"{st.st_size}-{st.st_mtime_ns}")
            except OSError:
                out.append("missing")
        return out

    def item_file(self, key) -> str:
        """The item's real file (symbolic links and ``..`` resolved): row reuse matches rows by it when ids differ
        (a manifest written elsewhere names the same files with a folder prefix)."""
        return os.path.realpath(key)


def content_fingerprint(path) -> str:
    """``"sha256:<hex>"`` of a file's bytes (the ``content`` fingerprint of a row)."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def recorded_file(description: dict, item_id: str) -> str | None:
    """The real file a cache row of ``item_id`` was made from, from the cache's recorded source (``None`` where
    ids are not paths: in-memory datasets, layouts whose ids are not relative to a folder)."""
    kind = description.get("kind")
    if kind == "imagefolder":
        base = description.get("root")
    elif kind == "manifest":
        base = os.path.dirname(description.get("manifest") or "")
    else:
        return None
    return os.path.realpath(os.path.join(base, item_id)) if base else None
