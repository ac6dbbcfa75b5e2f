"""A cache's arrays for tools that do not read HDF5: npz, a folder of npy files, or one parquet table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write

__all__ = ["export_arrays"]



def export_arrays(fs, out: Path, fmt: str) -> list[Path]:
    """Write every split's features, labels and ids in ``fmt``, one of :data:`featx.options.EXPORT_FORMATS`."""
    out = Path(out)
    written = []
    if fmt == "npz":
        arrays = {"classes": np.array(fs.classes)}
        for s in fs.splits:
            v = fs[s]
            arrays.update({f"{s}_X": v.X, f"{s}_y": v.y, f"{s}_ids": np.array(v.ids, dtype=str)})
        with atomic_write(out, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        written.append(out)
    elif fmt == "npy":
        out.mkdir(parents=True, exist_ok=True)
        for s in fs.splits:
            v = fs[s]
            for name, arr in (("X", v.X), ("y", v.y), ("ids", np.array(v.ids, dtype=str))):
                np.save(out / f"{s}_{name}.npy", arr)
                written.append(out / f"{s}_{name}.npy")
        (out / "classes.json").write_text(json.dumps(list(fs.classes), ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(out / "classes.json")
    elif fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FeatxError("parquet needs pyarrow, which is not installed: pip install pyarrow", param="format") from None
        tables = []
        for s in fs.splits:
            v = fs[s]
            y = v.y
            tables.append(pa.table({
                "split": pa.array([s] * len(y)), "id": pa.array(list(v.ids)), "label": pa.array(y),
                "class": pa.array([fs.classes[i] if i >= 0 else None for i in y]),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(v.X.reshape(-1)), int(v.X.shape[1]) if len(y) else 1),
            }))
        with atomic_write(out) as tmp:
            pq.write_table(pa.concat_tables(tables), tmp)
        written.append(out)
    else:
        raise FeatxUsageError(f"unknown export format {fmt!r} (npz, npy or parquet)")
    return written
