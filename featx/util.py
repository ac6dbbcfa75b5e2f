"""Small helpers every stage uses: one copy each.

Nothing here imports torch, numpy or scikit-learn at module level, so the command line can use
these before any heavy import.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["OFFLINE_ENV", "offline", "first_line", "did_you_mean", "atomic_write", "file_sha256", "softmax",
           "l2_normalise", "existing_file", "FILE_KINDS", "file_kind", "printable"]

#: Environment variable that forbids any download of weights or data (also set by ``--offline``).
OFFLINE_ENV = "FEATX_OFFLINE"


def offline() -> bool:
    """Whether downloads are forbidden (``FEATX_OFFLINE`` set to anything but empty/0/false/no)."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0", "false", "no")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.5) -> str:
    """``"did you mean a, b? "`` for the choices close to ``word`` (``""`` when none is)."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
    return f"did you mean {', '.join(close)}? " if close else ""


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only when the block succeeds.

    A reader never sees a half-written file: it sees the old one or the new one. On an error the
    temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    tmp = target.with_name(f"{target.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def softmax(scores):
    """Row-wise softmax of a 2-D numpy array of scores (numerically stable)."""
    import numpy as np

    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def l2_normalise(X):
    """Rows scaled to unit L2 norm, as float32 (all-zero rows stay zero): cosine similarity is then a dot product."""
    import numpy as np

    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def existing_file(path: str | None, what: str, hint: str = "") -> Path | None:
    """``path`` when it exists and is a file, else a usage error -- checked before anything heavy is imported."""
    from .errors import FeatxUsageError

    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        if Path(f"{path}.partial").exists():
            hint = " (an unfinished extraction exists next to it; run the extraction again to finish it)"
        raise FeatxUsageError(f"{what} {path} does not exist{hint}")
    if p.is_dir():
        raise FeatxUsageError(f"{what} {path} is a folder, not a file")
    if not p.is_file():  # a FIFO would block the reader forever; a device is no input
        raise FeatxUsageError(f"{what} {path} is not a regular file")
    return p


#: The first bytes of files featx must never overwrite by accident, and what they are (:func:`file_kind`).
_MAGIC = ((b"\x89HDF", "hdf5"), (b"\x89PNG", "image"), (b"\xff\xd8\xff", "image"), (b"GIF8", "image"), (b"BM", "image"),
          (b"II*\x00", "image"), (b"MM\x00*", "image"), (b"PK\x03\x04", "zip"))
#: :func:`file_kind` -> how an error names it.
FILE_KINDS = {"hdf5": "an HDF5 file (a featx cache?)", "image": "an image", "zip": "a zip archive (a head, an .npz, "
              "a .pt2)", "text": "a text file", "data": "a binary file", "folder": "a folder"}


def file_kind(path) -> str:
    """What an existing path is, from a file's first bytes: a key of :data:`FILE_KINDS`."""
    p = Path(path)
    if p.is_dir():
        return "folder"
    if not p.is_file():  # a FIFO or a device: never opened (a FIFO would block)
        return "data"
    with open(p, "rb") as f:
        head = f.read(4096)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[8:12] == b"WEBP":
        return "image"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "data"
    return "text"


def printable(text) -> str:
    """``text`` with control characters (ESC, CR, BEL, C1 ...) shown as escapes (``\\x1b``), newlines and tabs
    kept: class names, ids and file names a user shares can never drive the terminal."""
    import unicodedata

    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in str(text))
