"""Leakage-aware metrics in ``featx fit``: test (and val) scored with and without the items an audit of the same
cache found to copy a train item (:mod:`featx.audit.leaks`)."""

from __future__ import annotations

from pathlib import Path

import click

from .base import echo

__all__ = ["leak_options", "leaked_for", "echo_leaks"]


def leak_options(command):
    command = click.option("--audit", "audit_file", type=click.Path(dir_okay=False), default=None,
                           help="The audit.json of this cache (default: reports/audit-<cache stem>/audit.json when "
                                "it exists and is this cache's).")(command)
    return click.option("--exclude-leaked", is_flag=True,
                        help="Require an audit of this cache and report val/test also without the items that copy "
                             "a train item (done anyway when such an audit is found).")(command)


def leaked_for(path: Path, cache_key: str, audit_file, exclude_leaked: bool) -> tuple[dict | None, dict | None]:
    """``({split: ids}, card record)`` from the audit of the cache ``path`` (key ``cache_key``), or ``(None, None)``
    without one."""
    from ..audit.leaks import find_audit, leaked_ids

    found = find_audit(path, cache_key, audit_file, required=exclude_leaked)
    if found is None:
        return None, None
    audit_path, record = found
    leaked = leaked_ids(record)
    return leaked, {"audit": str(audit_path), "excluded": {s: len(ids) for s, ids in sorted(leaked.items())},
                    "rule": "val/test items in a copy group with a train item (featx audit's pixel-checked copies)"}


def echo_leaks(metrics: dict, card: dict | None) -> None:
    """One line per split scored without its leaked items, beside its score with them."""
    if card is None:
        return
    if not any(card["excluded"].values()):
        echo(f"leakage: the audit ({card['audit']}) finds no val/test item that copies a train item")
    for split, n in card["excluded"].items():
        clean, full = metrics.get(f"{split}_without_leaked"), metrics.get(split)
        if n and clean and full:
            echo(f"{split} without the {n} item(s) that copy a train item (audit {card['audit']}): top1 "
                 f"{clean['top1']:.4f} on {clean['n']} (with them: {full['top1']:.4f} on {full['n']})")
