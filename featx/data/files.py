"""Sources of image files: an image folder, a CSV manifest, the Stanford Dogs layout."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from .sources import CARVE_RULE, FileSource, SPLIT_DIRS, SplitItems

__all__ = ["LABEL_SEPARATOR", "ImageFolderSource", "ManifestSource", "StanfordDogsSource", "image_files", "safe_id", "write_manifest_csv"]

log = logging.getLogger("featx")


class ImageFolderSource(FileSource):
    """``root/<class>/*`` (split here) or ``root/{train,val,test}/<class>/*`` (split given)."""

    def __init__(self, root: str | os.PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, limit: int = 0):
        self.root = Path(root)
        self.val_fraction = float(val_fraction)  # 0 and 0.0 are one setting: one cache key
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.limit = limit
        self.name = self.root.resolve().name.lower() or "images"
        self.presplit = (self.root / "train").is_dir()

    def _scan(self, folder: Path, class_to_idx: dict[str, int]) -> SplitItems:
        samples = once_each([(p, c) for name, c in class_to_idx.items() for p in image_files(folder / name)],
                            where=f"image folder {folder}")
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
            **self._carving(),
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


def once_each(samples: list[tuple[str, int]], *, where: str) -> list[tuple[str, int]]:
    """Each real file once: a picture reached again through a symbolic link (``dog/loop -> ..`` would re-ingest
    every image under another class, copies landing in different splits) is kept where it really is (the path
    without a link), else where it was first found; a one-line note says how many were left out."""
    by_file: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for path, label in samples:
        st = os.stat(path)
        by_file.setdefault((st.st_dev, st.st_ino), []).append((path, label))
    kept, dropped = [], []
    for group in by_file.values():
        if len(group) == 1:  # the usual case: no second path to this file, nothing to resolve
            kept.append(group[0])
            continue
        direct = [s for s in group if os.path.realpath(s[0]) == os.path.abspath(s[0])]
        keep = (direct or group)[0]
        kept.append(keep)
        dropped += [s[0] for s in group if s is not keep]
    if dropped:
        log.info(f"note: {where}: {len(dropped)} file(s) reached again through symbolic links were counted once "
                 f"(e.g. {dropped[0]})")
    return kept


def _require_files(where, paths) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FeatxError(f"{where}: {len(missing)} listed file(s) do not exist, e.g. {missing[0]}")


#: The separator of a multi-label manifest's ``labels`` column.
LABEL_SEPARATOR = ";"


class ManifestSource(FileSource):
    """A CSV manifest: ``path,label[,split]`` per row, paths relative to the manifest's folder.

    A header row ``path,label[,split]`` is optional. An empty label or ``-1`` marks an
    unlabelled row (label -1). ``split`` is ``train``, ``val`` or ``test``; when no row has a
    split, val and test are carved from all rows as for a flat image folder. Class names are
    the distinct labels, sorted (numerically when all are integers).

    **Multi-label**: a header ``path,labels[,split]`` (``labels``, plural) makes every row's second field a list of
    labels separated by ``;`` (:data:`LABEL_SEPARATOR`; ``cat;dog``); an empty field is unlabelled. The items then
    carry label sets (:attr:`SplitItems.label_sets`) and the cache a label matrix. Folder layouts cannot say that
    an image has several labels: only a manifest can.
    """

    multilabel = False

    def __init__(self, manifest: str | os.PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, limit: int = 0, allow_outside: bool = False):
        self.manifest = Path(manifest)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.seed, self.limit = seed, limit
        self.allow_outside = allow_outside
        self.name = self.manifest.stem.lower()

    def _rows(self) -> list[tuple[int, str, str, str]]:
        try:
            with open(self.manifest, newline="", encoding="utf-8") as f:
                rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if row and any(c.strip() for c in row)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise FeatxError(f"manifest {self.manifest} cannot be read: {exc}") from None
        header = [c.strip().lower() for c in rows[0][1]] if rows else []
        if header in (["path", "label"], ["path", "label", "split"], ["path", "labels"], ["path", "labels", "split"]):
            rows = rows[1:]
            self.multilabel = header[1] == "labels"
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

    def _label_sets(self, rows) -> dict[int, tuple[str, ...]]:
        """Row number -> its labels (a multi-label manifest); a label repeated in a row counts once."""
        out = {}
        for n, _, field_, _ in rows:
            labels = [t.strip() for t in field_.split(LABEL_SEPARATOR)]
            if field_ and not all(labels):
                raise FeatxError(f"{self.manifest}:{n}: an empty label in {field_!r} (labels are separated by "
                                 f"{LABEL_SEPARATOR!r}, e.g. cat{LABEL_SEPARATOR}dog)")
            out[n] = tuple(sorted(set(labels))) if field_ else ()
        return out

    def _find(self) -> dict[str, SplitItems]:
        rows = self._rows()
        base = self.manifest.parent.resolve()
        sets = self._label_sets(rows) if self.multilabel else {}
        if not self.multilabel and any(LABEL_SEPARATOR in label for _, _, label, _ in rows):
            log.info(f"note: manifest {self.manifest}: labels such as {next(lb for _, _, lb, _ in rows if ';' in lb)!r} "
                     "are single class names here; for several labels per image, name the column labels "
                     "(header path,labels[,split])")
        names = sorted({label for _, _, label, _ in rows if label} if not self.multilabel
                       else {name for labels in sets.values() for name in labels})
        if names and all(_is_int(n) for n in names):
            names.sort(key=int)
        self.classes = names
        index = {name: i for i, name in enumerate(names)}
        with_split = {split for *_, split in rows}
        if "" in with_split and len(with_split) > 1:
            n = next(n for n, *_, split in rows if not split)
            raise FeatxError(f"{self.manifest}:{n}: no split, but other rows have one; give every row a split or none")
        grouped: dict[str, list] = {}
        first: dict[str, tuple[int, str]] = {}  # resolved file -> (row, label) of its first listing
        repeats = []
        for n, path, label, split in rows:
            try:
                full = (base / path).resolve()
            except (ValueError, OSError) as exc:  # a NUL byte, a link loop, a name too long
                raise FeatxError(f"{self.manifest}:{n}: path {path!r} is not usable ({exc})") from None
            if not self.allow_outside and not full.is_relative_to(base):
                raise FeatxError(f"{self.manifest}:{n}: {path} is outside the manifest's folder {base}")
            if str(full) in first:  # the same file again (maybe spelled sub/../a.png): never counted twice
                row, other = first[str(full)]
                if other != label:
                    raise FeatxError(f"{self.manifest}:{n}: {path} is the file of row {row} with another label "
                                     f"({label!r} vs {other!r}); list each image once")
                repeats.append(n)
                continue
            first[str(full)] = (n, label)
            grouped.setdefault(split or "train", []).append(
                (str(full), path, -1 if self.multilabel else index.get(label, -1),
                 (tuple(index[x] for x in sets[n]) if sets[n] else None) if self.multilabel else None))
        if repeats:
            log.info(f"note: manifest {self.manifest}: rows {', '.join(map(str, repeats[:5]))}"
                     f"{' ...' if len(repeats) > 5 else ''} list a file already listed; each file is kept once, at "
                     "its first row")
        _require_files(f"manifest {self.manifest}", [k for g in grouped.values() for k, *_ in g])
        found = {
            split: SplitItems([k for k, *_ in g], [i for _, i, *_ in g], np.array([y for _, _, y, _ in g], dtype=np.int64),
                              [s for *_, s in g] if self.multilabel else None)
            for split, g in grouped.items()
        }
        if "train" not in found:
            raise FeatxError(f"manifest {self.manifest} has no train rows")
        return found

    def describe(self) -> dict:
        return {
            "kind": "manifest",
            "manifest": str(self.manifest.resolve()),
            **({"multilabel": {"separator": LABEL_SEPARATOR}} if self.multilabel else {}),
            **self._carving(),
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
        self.val_fraction, self.seed, self.limit = float(val_fraction), seed, limit
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


def write_manifest_csv(target, rows) -> None:
    """A CSV manifest ``path,label,split`` of ``rows`` (``(file, label name, split)``) at ``target``, paths relative
    to the manifest's folder: the format :class:`ManifestSource` reads. Written through a temporary file."""
    from ..util import atomic_write

    target = Path(target)
    base = target.resolve().parent
    with atomic_write(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for key, label, split in rows:
            w.writerow([os.path.relpath(Path(key).resolve(), base), label, split])
