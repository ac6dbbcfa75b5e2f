"""A cache's arrays for tools that do not read HDF5: npz, a folder of npy files, one Parquet table, or a Lance table
(a folder, for vector databases)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write

__all__ = ["export_arrays"]



def export_arrays(fs, out: Path, fmt: str) -> list[Path]:
    """Write every split's features, labels and ids in ``fmt``, one of :data:`featx.options.EXPORT_FORMATS`; a
    multi-label cache's label matrix too (``<split>_Y``; the ``classes`` column a list of names)."""
    out = Path(out)
    written = []
    if fmt == "npz":
        arrays = {"classes": np.array(fs.classes)}
        for s in fs.splits:
            v = fs[s]
            arrays.update({f"{s}_X": v.X, f"{s}_y": v.y, f"{s}_ids": np.array(v.ids, dtype=str),
                           **({f"{s}_Y": v.Y} if fs.multilabel else {})})
        with atomic_write(out, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        written.append(out)
    elif fmt == "npy":
        out.mkdir(parents=True, exist_ok=True)
        for s in fs.splits:
            v = fs[s]
            for name, arr in (("X", v.X), ("y", v.y), ("ids", np.array(v.ids, dtype=str)),
                              *((("Y", v.Y),) if fs.multilabel else ())):
                np.save(out / f"{s}_{name}.npy", arr)
                written.append(out / f"{s}_{name}.npy")
        (out / "classes.json").write_text(json.dumps(list(fs.classes), ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(out / "classes.json")
    elif fmt == "parquet":
        pq = _module("pyarrow.parquet", "parquet needs pyarrow")
        with atomic_write(out) as tmp:
            pq.write_table(_table(fs), tmp)
        written.append(out)
    elif fmt == "lance":
        lance = _module("lance", "lance needs pylance")
        if out.exists() and not (out / "_versions").is_dir():
            raise FeatxUsageError(f"{out} exists and is not a Lance table: name another --out", param="out")
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        lance.write_dataset(_table(fs), str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        written.append(out)
    else:
        raise FeatxUsageError(f"unknown export format {fmt!r} (npz, npy, parquet or lance)")
    return written


def _module(name: str, what: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise FeatxError(f"{what}, which is not installed: pip install 'featx[io]' (make install does)",
                         param="format") from None


def _table(fs):
    """Every split as one Arrow table: split, id, label, class, features (a fixed-size list of float32)."""
    pa = _module("pyarrow", "parquet and lance need pyarrow")
    tables = []
    for s in fs.splits:
        v = fs[s]
        y = v.y
        Y = v.Y if fs.multilabel else None
        names = ([[fs.classes[j] for j in np.flatnonzero(row > 0)] if (row >= 0).all() else None for row in Y]
                 if Y is not None else [fs.classes[i] if i >= 0 else None for i in y])
        tables.append(pa.table({
            "split": pa.array([s] * len(y)), "id": pa.array(list(v.ids)), "label": pa.array(y),
            "class": pa.array(names),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(v.X.reshape(-1)), int(fs.feature_dim)),
        }))
    return pa.concat_tables(tables)
