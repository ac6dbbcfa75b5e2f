"""``featx info``, ``featx backbones`` and ``featx heads``: what a cache, the backbones and the heads are."""

from __future__ import annotations

import json

import click

from .base import echo

__all__ = ["info", "backbones", "heads"]



@click.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON instead of text.")
def info(cache, as_json):
    """Describe a cache file: schema, backbone, weights, transform, splits, completeness, skipped items.

    A complete cache is read through once, checking every chunk's checksum. Unfinished
    `.h5.partial` files can be inspected too (without that check: another process may be writing).
    """
    from ..cache.store import open_features

    fs = open_features(cache, allow_incomplete=True)
    splits = {}
    for name in fs.splits:
        view = fs[name]
        splits[name] = {"rows": len(view), "items": view.n_items, "skipped": view.skipped}
        if fs.meta.get("complete"):
            view.verify()  # every chunk's checksum: a damaged file is an error here, not wrong numbers later
    record = {"path": str(fs.path), **fs.meta, "classes": list(fs.classes), "splits": splits}
    if as_json:
        echo(json.dumps(record, indent=2, default=str))
        return
    m = fs.meta
    echo(f"cache          {fs.path}")
    echo(f"complete       {'yes' if m.get('complete') else 'no (unfinished; the next extraction resumes it)'}")
    echo(f"schema         {m.get('schema_version')} (written by featx {m.get('featx_version')}, {m.get('created')})")
    echo(f"cache key      {m.get('cache_key')}")
    echo(f"backbone       {m.get('backbone')} weights {m.get('weights')} ({m.get('feature_dim')}-d, "
               f"{m.get('layer', 'penultimate')} layer{', ' + m['pooling'] + ' pooling' if m.get('pooling') else ''}, "
               f"{m.get('precision')})")
    echo(f"weights sha256 {m.get('weights_sha256') or '-'}{'  (' + m['weights_file'] + ')' if m.get('weights_file') else ''}")
    echo(f"transform      {json.dumps(m.get('transform'))}")
    echo(f"source         {json.dumps(m.get('source'))}")
    echo(f"classes        {len(fs.classes)}: {', '.join(fs.classes[:10])}{' ...' if len(fs.classes) > 10 else ''}")
    for name, s in splits.items():
        echo(f"split {name:<8} {s['rows']} rows of {s['items']} items, {len(s['skipped'])} skipped")
        for item in s["skipped"][:20]:
            echo(f"    skipped {item['id']}: {item['reason']}")


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Also list weights that would need a download.")
def backbones(show_all):
    """List torchvision backbones and weights (embedding size, parameters, ImageNet top-1, offline or not), then the
    timm: and clip: families with suggested backbones (embedding size, the weights' licence, offline or not).

    Use a row as `--backbone NAME --weights WEIGHTS` (or `--backbone NAME:WEIGHTS`).
    """
    from ..backbones.registry import list_backbones

    echo(f"{'name':<22} {'weights':<26} {'dim':>5} {'params':>8} {'top1':>6}  offline")
    for row in list_backbones(offline_only=not show_all):
        params = f"{row.params / 1e6:.1f}M" if row.params else "-"
        top1 = f"{row.top1:.1f}" if row.top1 else "-"
        weights = row.weights + (" (default)" if row.is_default else "")
        echo(f"{row.name:<22} {weights:<26} {row.feature_dim:>5} {params:>8} {top1:>6}  "
                   f"{'yes' if row.offline else 'no (downloads on first use)'}")
    if not show_all:
        echo("(only weights available offline are listed; --all lists every torchvision backbone)")
    from ..backbones.names import FAMILIES
    from ..backbones.registry import family_rows

    echo("")
    echo("Other families (--backbone PREFIX...; hub weights online, --weights-file PATH offline, --weights none for "
         "random init):")
    for prefix, (what, extra) in FAMILIES.items():
        echo(f"  {prefix:<6} {what} [featx[{extra}]]")
    echo(f"{'name':<44} {'dim':>5} {'licence':<11} offline  what")
    for row in family_rows():
        dim = str(row.feature_dim) if row.feature_dim else "-"
        here = f"no: pip install 'featx[{row.missing}]'" if row.missing else ("yes" if row.offline else "no")
        echo(f"{row.name:<44} {dim:>5} {row.licence:<11} {here:<8} {row.what}")


@click.command()
def heads():
    """List the heads, what each is, and its main parameters with their defaults."""
    from ..heads.registry import HEADS, head_params

    for spec in HEADS.values():
        params = head_params(spec.build())
        echo(f"{spec.name:<13} {spec.description}")
        echo(f"{'':<13} {', '.join(f'{k}={params[k]!r}' for k in spec.key_params)}")
    echo("Override any parameter with `featx fit --param NAME=VALUE` (other steps: STEP__NAME=VALUE).")
