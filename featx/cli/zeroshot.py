"""The zero-shot head in ``featx fit`` and ``featx grid``: made from a ``clip:`` cache's text tower, never trained
(:mod:`featx.heads.zeroshot`)."""

from __future__ import annotations

from pathlib import Path

from .base import echo, existing_file

__all__ = ["zeroshot_head", "zeroshot_row"]


def zeroshot_head(fs, overrides: dict, templates) -> tuple:
    """The zero-shot head of a clip: cache ``fs`` (its class names through the recorded backbone's text tower) and
    the card fields that say how it was made."""
    from ..heads.registry import make_head
    from ..heads.zeroshot import read_templates, zeroshot_params

    if templates:
        existing_file(templates, "templates file")
    prompts = read_templates(templates)
    made = zeroshot_params(fs.meta, list(fs.classes), prompts)
    echo(f"zeroshot: {len(fs.classes)} class names x {len(prompts)} templates through the text tower of "
         f"{fs.meta.get('backbone')} (logit scale {made['logit_scale']:.4g}); no training")
    head = make_head("zeroshot", {**made, **{k: v for k, v in overrides.items() if k == "logit_scale"}})
    return head, {"zeroshot": {"templates": prompts, "templates_file": str(templates) if templates else None,
                               "class_names": list(fs.classes)}}


def zeroshot_row(path: Path, out_dir: Path) -> None:
    """On a cache with a text tower: the zero-shot head (CLIP's ImageNet templates, no training) as a baseline row
    beside the searched heads -- printed, and added to results.json and report.md."""
    import json

    from ..cache.store import open_features
    from ..heads.zeroshot import has_text_tower
    from ..probe.evaluate import evaluate
    from ..util import atomic_write

    fs = open_features(path)
    if not has_text_tower(fs.meta):
        return
    head, card = zeroshot_head(fs, {}, None)
    head.fit(fs["train" if "train" in fs else "test"].rows(0, 1))  # learns nothing: one row checks the width
    row = {"head": "zeroshot", "templates": len(card["zeroshot"]["templates"]),
           **{split: evaluate(head, fs[split].X, fs[split].y) for split in ("val", "test") if split in fs}}
    echo(f"zero-shot baseline (no training): " + ", ".join(f"{s} top1 {row[s]['top1']:.4f}" for s in ("val", "test")
                                                             if s in row))
    results_file = out_dir / "results.json"
    results = json.loads(results_file.read_text(encoding="utf-8"))
    results["zeroshot"] = row
    with atomic_write(results_file) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report = out_dir / "report.md"
    if report.is_file():
        lines = [f"| {s} | {row[s]['n']} | {row[s]['top1']:.4f} | {row[s]['top5']:.4f} |" for s in ("val", "test")
                 if s in row]
        text = report.read_text(encoding="utf-8") + (
            "\n## Zero-shot baseline\n\nThe class names through the backbone's text tower with CLIP's "
            f"{row['templates']} ImageNet templates; no training (`featx fit --head zeroshot`).\n\n"
            "| split | n | top1 | top5 |\n|---|---:|---:|---:|\n" + "\n".join(lines) + "\n")
        with atomic_write(report) as tmp:
            tmp.write_text(text, encoding="utf-8")
