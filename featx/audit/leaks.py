"""Leakage-aware metrics (issue 29): the val and test items that copy a train item, read from an audit of the same
cache (``featx audit``'s ``audit.json``), so that ``featx fit`` reports test accuracy with and without them.

An item is *leaked* when it is in a copy group (pixel-checked copies, :mod:`featx.audit.duplicates`) with a train
item: a head has, in effect, seen it. Look-alikes (similar embeddings that are not copies) are not counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FeatxError, FeatxUsageError

__all__ = ["default_audit", "find_audit", "leaked_ids"]


def default_audit(cache) -> Path:
    """Where ``featx audit CACHE`` writes its record by default: ``reports/audit-<cache stem>/audit.json``."""
    return Path("reports") / f"audit-{Path(cache).stem}" / "audit.json"


def find_audit(cache, cache_key: str, explicit=None, *, required: bool = False) -> tuple[Path, dict] | None:
    """The audit record of this very cache: ``explicit``, else the default place; ``None`` when there is none (or,
    with ``required``, a one-line error saying how to make one). An audit of another cache is refused."""
    path = Path(explicit) if explicit else default_audit(cache)
    if not path.is_file():
        if explicit or required:
            raise FeatxUsageError(f"no audit of this cache at {path}: run `featx audit {cache}` first (or name its "
                                  "audit.json with --audit)", param="audit")
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatxError(f"{path} is not an audit record ({exc})") from None
    if not isinstance(record, dict) or record.get("cache_key") != cache_key:
        if explicit or required:
            raise FeatxUsageError(f"{path} is an audit of another cache (key {record.get('cache_key')}, this one "
                                  f"{cache_key}): audit this cache again", param="audit")
        return None
    return path, record


def leaked_ids(record: dict) -> dict[str, set[str]]:
    """``{split: ids}`` of the val and test items in a copy group with a train item."""
    out: dict[str, set[str]] = {}
    for group in (record.get("duplicates") or {}).get("groups") or []:
        if any(item.get("split") == "train" for item in group):
            for item in group:
                if item.get("split") in ("val", "test"):
                    out.setdefault(item["split"], set()).add(str(item["id"]))
    return out
