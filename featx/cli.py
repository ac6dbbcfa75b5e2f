"""The ``featx`` command line. It only wires the modules together.

Exit status: 0 on success, 2 on bad usage (click's own), 1 on a failed run. Every error is
one line, ``featx: error: ...``; ``featx --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path

import click

from .errors import FeatxError

__all__ = ["main"]


class _Failure(click.ClickException):
    """A failed run: one line on stderr, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"featx: error: {self.format_message()}", err=True)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except FeatxError as exc:
            if ctx.params.get("debug"):
                raise
            raise _Failure(str(exc)) from None
        except Exception as exc:  # a bug or an environment problem we did not foresee
            if ctx.params.get("debug"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            raise _Failure(f"{type(exc).__name__}: {first} (run `featx --debug ...` for the traceback)") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line.")
@click.version_option(package_name="featx", message="featx %(version)s")
def main(debug: bool) -> None:
    """featx: extract frozen-CNN embeddings once into an HDF5 cache, then fit heads on them in seconds.

    Typical use: `featx extract --pipeline pipelines/default.toml`, then
    `featx fit --pipeline pipelines/default.toml --head svm`.
    """


# -- shared option sets ---------------------------------------------------------------------
def _experiment(pipeline: str | None, **overrides):
    from .pipeline import Experiment, load_pipeline

    exp = load_pipeline(pipeline) if pipeline else Experiment()
    for key, value in overrides.items():
        if value is not None:
            setattr(exp, key, value)
    return exp


def _source_and_backbone(exp, *, device: str = "cpu"):
    from .backbones import load_backbone
    from .sources import make_source

    source = make_source(exp.data, root=exp.root, download=exp.download, val_fraction=exp.val_fraction,
                         test_fraction=exp.test_fraction, seed=exp.seed, limit=exp.limit)
    source.splits()
    backbone = load_backbone(exp.backbone, exp.weights, device=device, layer=exp.layer)
    return source, backbone


def _check_device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FeatxError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatxError(f"device {device} asked for, but this machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FeatxError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise FeatxError(f"device {device!r} is not supported (use cpu, cuda or cuda:N)")
    return device


_pipeline_option = click.option(
    "--pipeline", "-p", type=click.Path(dir_okay=False), default=None,
    help="Pipeline file (pipelines/*.toml) giving source, backbone and settings; other options override it.",
)


@main.command()
@_pipeline_option
@click.option("--data", help="Source: torchvision:<Name> (e.g. torchvision:FashionMNIST), an image folder "
              "(root/<class>/* or root/{train,val,test}/<class>/*), a .csv manifest (path,label[,split]) or a "
              "Stanford Dogs root (Images/ + lists/); the detected layout is reported.")
@click.option("--root", help="Where torchvision datasets are stored or downloaded (default cache/datasets).")
@click.option("--download/--no-download", default=None,
              help="Let torchvision download a built-in dataset if it is missing (default: no).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True),
              help="Fraction carved out as a stratified validation split when the data has none (default 0.1).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True),
              help="Fraction carved out as a stratified test split when the data has none (default 0.1).")
@click.option("--seed", type=int, help="Seed of the validation/test split (default 0).")
@click.option("--limit", type=click.IntRange(min=0),
              help="Use only the first N items of each split (a quick trial; 0 = all, the default).")
@click.option("--backbone", "-b", help="torchvision model name, optionally name:WEIGHTS (default mobilenet_v2); "
              "efficientnet_lite0 (embedded); or timm:<name> (weights from the local Hugging Face cache).")
@click.option("--weights", "-w", help="Weights enum member (IMAGENET1K_V1), DEFAULT, none for random init, or a "
              "local .pth state dict (loaded with weights_only=True, preprocessed as the default weights).")
@click.option("--layer", help="Take the embedding from this intermediate node (torchvision feature_extraction "
              "name, e.g. features.14), global-average-pooled, instead of the penultimate layer.")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Cache file to write (default <cache-dir>/<dataset>/<backbone>-<key>.h5).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Folder of caches (default cache).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass (default 16, fastest for small CNNs on 2 CPU cores).")
@click.option("--workers", type=click.IntRange(min=-1),
              help="DataLoader worker processes decoding images; -1 = automatic (default).")
@click.option("--device", help="cpu (default), cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]),
              help="fp32 (default: equals a plain torchvision forward), or bf16/fp16 autocast (faster, recorded).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Run the backbone in channels_last memory format (default on; same features within fp32 rounding).")
@click.option("--offline", is_flag=True, help="Never download weights or data; fail with what to fetch instead.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def extract(pipeline, data, root, download, val_fraction, test_fraction, seed, limit, backbone, weights, layer, out, cache_dir, batch_size, workers,
            device, precision, channels_last, offline, no_progress):
    """Run a frozen backbone over a dataset once and write its embeddings to an HDF5 cache.

    A complete cache with the same key is reused; an interrupted run resumes where it stopped.
    """
    from .backbones import OFFLINE_ENV
    from .extract import extract as run_extract

    if offline:
        os.environ[OFFLINE_ENV] = "1"
    exp = _experiment(pipeline, data=data, root=root, download=download, val_fraction=val_fraction,
                      test_fraction=test_fraction, seed=seed, limit=limit,
                      backbone=backbone,
                      weights=weights, layer=layer, cache_dir=cache_dir, batch_size=batch_size, workers=workers, device=device,
                      precision=precision, channels_last=channels_last)
    _check_device(exp.device)
    source, bb = _source_and_backbone(exp, device=exp.device)
    from .sources import layout_of

    sizes = ", ".join(f"{s} {len(items)}" for s, items in source.splits().items())
    click.echo(f"data: {layout_of(source)}, {len(source.classes)} classes; {sizes}", err=True)
    result = run_extract(
        source, bb, out=out, cache_dir=exp.cache_dir, batch_size=exp.batch_size,
        workers=None if exp.workers < 0 else exp.workers, device=exp.device, precision=exp.precision,
        channels_last=exp.channels_last, progress=not no_progress,
    )
    if result.reused:
        click.echo(f"reusing {result.path} (cache key {result.cache_key} matches; nothing to recompute)")
        return
    skipped = f", {result.n_skipped} skipped (see `featx info`)" if result.n_skipped else ""
    click.echo(
        f"wrote {result.path}: {result.n_items} items{skipped}; {result.n_new} new in {result.seconds:.1f} s "
        f"= {result.images_per_s:.1f} images/s ({bb.name}, {exp.precision}, {exp.device}, batch {exp.batch_size})"
    )


def _resolve_cache(cache: str | None, exp) -> Path:
    if cache:
        return Path(cache)
    from .extract import cache_key, cache_path

    source, bb = _source_and_backbone(exp)
    path = cache_path(exp.cache_dir, source, bb, cache_key(source, bb, exp.precision))
    if not path.exists():
        raise FeatxError(f"no cache for this pipeline yet ({path}); run `featx extract` (make features) first")
    return path


@main.command()
@click.argument("cache", required=False, type=click.Path(dir_okay=False))
@_pipeline_option
@click.option("--head", "-H", "head_name", default="svm", show_default=True,
              help="Head to train; `featx heads` lists them.")
@click.option("--param", "-P", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a head parameter, e.g. C=0.1 or kmap__gamma=1e-3 (repeatable; wins over the pipeline).")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Where to save the fitted head (default next to the cache: <cache>.<head>.joblib, plus .json card).")
def fit(cache, pipeline, head_name, params, out):
    """Train a head on the cached train split; report val and test metrics; save it.

    CACHE is a cache file; without it, the cache of --pipeline (default settings if none) is used.
    """
    import joblib
    import numpy as np

    from . import __version__
    from .backbones import file_sha256
    from .evaluate import METRICS, evaluate
    from .heads import head_params, make_head, parse_params
    from .store import open_features

    exp = _experiment(pipeline)
    overrides = {**exp.heads.get(head_name, {}), **parse_params(params)}
    head = make_head(head_name, overrides)
    path = _resolve_cache(cache, exp)
    fs = open_features(path)
    if "train" not in fs:
        raise FeatxError(f"{path} has no train split to fit on")
    train = fs["train"]
    X, y = train.X, train.y
    keep = y >= 0
    if len(np.unique(y[keep])) < 2:
        raise FeatxError(f"{path}: the train split needs at least two labelled classes to fit a head")
    click.echo(f"fitting {head_name} on {int(keep.sum())} x {X.shape[1]} ({len(fs.classes)} classes) from {path}",
               err=True)
    t0 = time.perf_counter()
    try:
        head.fit(X[keep], y[keep])
    except (ValueError, TypeError) as exc:  # sklearn's InvalidParameterError is a ValueError
        raise FeatxError(f"cannot fit {head_name}: {str(exc).splitlines()[0]}") from None
    fit_s = time.perf_counter() - t0
    metrics = {}
    for split in ("val", "test"):
        if split in fs:
            view = fs[split]
            metrics[split] = evaluate(head, view.X, view.y)
    from .heads import HEADS

    shown = {k: v for k, v in head_params(head).items() if k in HEADS[head_name].key_params}
    click.echo(f"{head_name}: fit {fit_s:.1f} s; {', '.join(f'{k}={v!r}' for k, v in shown.items())}")
    click.echo(f"{'split':<6} {'n':>6} " + " ".join(f"{m:>14}" for m in METRICS))
    for split, m in metrics.items():
        if m:
            click.echo(f"{split:<6} {m['n']:>6} " + " ".join(f"{m[k]:>14.4f}" for k in METRICS))
    target = Path(out) if out else path.with_name(f"{path.stem}.{head_name}.joblib")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    joblib.dump(head, tmp)
    os.replace(tmp, target)
    card = {
        "head": head_name,
        "params": head_params(head),
        "metrics": metrics,
        "fit_seconds": round(fit_s, 3),
        "n_train": int(keep.sum()),
        "cache": str(path),
        "cache_key": fs.cache_key,
        "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"),
        "classes": list(fs.classes),
        "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "head_file": target.name,
        "head_sha256": file_sha256(target),
    }
    card_path = target.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    click.echo(f"saved {target} and {card_path}")


@main.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON instead of text.")
def info(cache, as_json):
    """Describe a cache file: schema, backbone, weights, transform, splits, completeness, skipped items.

    Unfinished `.h5.partial` files can be inspected too.
    """
    from .store import open_features

    fs = open_features(cache, allow_incomplete=True)
    splits = {}
    for name in fs.splits:
        view = fs[name]
        splits[name] = {"rows": len(view), "items": view.n_items, "skipped": view.skipped}
    record = {"path": str(fs.path), **fs.meta, "classes": list(fs.classes), "splits": splits}
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    m = fs.meta
    click.echo(f"cache          {fs.path}")
    click.echo(f"complete       {'yes' if m.get('complete') else 'no (unfinished; the next extraction resumes it)'}")
    click.echo(f"schema         {m.get('schema_version')} (written by featx {m.get('featx_version')}, {m.get('created')})")
    click.echo(f"cache key      {m.get('cache_key')}")
    click.echo(f"backbone       {m.get('backbone')} weights {m.get('weights')} ({m.get('feature_dim')}-d, "
               f"{m.get('layer', 'penultimate')} layer, {m.get('precision')})")
    click.echo(f"weights sha256 {m.get('weights_sha256') or '-'}")
    click.echo(f"transform      {json.dumps(m.get('transform'))}")
    click.echo(f"source         {json.dumps(m.get('source'))}")
    click.echo(f"classes        {len(fs.classes)}: {', '.join(fs.classes[:10])}{' ...' if len(fs.classes) > 10 else ''}")
    for name, s in splits.items():
        click.echo(f"split {name:<8} {s['rows']} rows of {s['items']} items, {len(s['skipped'])} skipped")
        for item in s["skipped"][:20]:
            click.echo(f"    skipped {item['id']}: {item['reason']}")


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Also list weights that would need a download.")
def backbones(show_all):
    """List torchvision backbones and weights: embedding size, parameters, ImageNet top-1, offline or not.

    Use a row as `--backbone NAME --weights WEIGHTS` (or `--backbone NAME:WEIGHTS`).
    """
    from .backbones import list_backbones

    click.echo(f"{'name':<22} {'weights':<26} {'dim':>5} {'params':>8} {'top1':>6}  offline")
    for row in list_backbones(offline_only=not show_all):
        params = f"{row.params / 1e6:.1f}M" if row.params else "-"
        top1 = f"{row.top1:.1f}" if row.top1 else "-"
        weights = row.weights + (" (default)" if row.is_default else "")
        click.echo(f"{row.name:<22} {weights:<26} {row.feature_dim:>5} {params:>8} {top1:>6}  "
                   f"{'yes' if row.offline else 'no (downloads on first use)'}")
    if not show_all:
        click.echo("(only weights available offline are listed; --all lists every torchvision backbone)")


@main.command()
def heads():
    """List the heads, what each is, and its main parameters with their defaults."""
    from .heads import HEADS, head_params

    for spec in HEADS.values():
        params = head_params(spec.build())
        click.echo(f"{spec.name:<13} {spec.description}")
        click.echo(f"{'':<13} {', '.join(f'{k}={params[k]!r}' for k in spec.key_params)}")
    click.echo("Override any parameter with `featx fit --param NAME=VALUE` (other steps: STEP__NAME=VALUE).")
