"""The ``featx`` command line. It only wires the modules together.

Exit status: 0 on success, 2 on bad usage (click's own), 1 on a failed run. Every error is
one line, ``featx: error: ...``; ``featx --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import sys
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


def _source_and_backbone(exp, *, device: str = "cpu", allow_outside: bool = False):
    from .backbones import load_backbone
    from .sources import make_source

    source = make_source(exp.data, root=exp.root, download=exp.download, val_fraction=exp.val_fraction,
                         test_fraction=exp.test_fraction, seed=exp.seed, limit=exp.limit,
                         allow_outside=allow_outside)
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
@click.option("--decoder", type=click.Choice(["pil", "torchvision"]),
              help="pil (default: PIL, as torchvision's ImageFolder loader) or torchvision (torchvision.io decoding of "
                   "JPEG/PNG/WebP files and the weights' transform on uint8 tensors: faster, features within ~1.5%, "
                   "recorded and part of the cache key).")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="Run the backbone through torch.compile (default off): ~30 s of compiling first, then a faster "
                   "forward (1.9x for MobileNetV2 on 2 CPU cores); same features within fp32 rounding, recorded.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Run the backbone in channels_last memory format (default on; same features within fp32 rounding).")
@click.option("--offline", is_flag=True, help="Never download weights or data; fail with what to fetch instead.")
@click.option("--strict", is_flag=True,
              help="Fail on the first unreadable image instead of recording it as skipped (see `featx info`).")
@click.option("--allow-outside", is_flag=True,
              help="Let a CSV manifest list files outside its own folder (refused by default).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def extract(pipeline, data, root, download, val_fraction, test_fraction, seed, limit, backbone, weights, layer, out, cache_dir, batch_size, workers,
            device, precision, decoder, compile_model, channels_last, offline, strict, allow_outside, no_progress):
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
                      precision=precision, channels_last=channels_last, decoder=decoder, compile=compile_model)
    if backbone and not weights:  # another backbone than the pipeline's: not the pipeline's weights either
        exp.weights = None
    from .shards import dist_env

    rank, world, local_rank = dist_env()  # torchrun: one shard per process, merged at the end
    if world > 1 and exp.device == "cuda":
        exp.device = f"cuda:{local_rank}"
    _check_device(exp.device)
    source, bb = _source_and_backbone(exp, device=exp.device, allow_outside=allow_outside)
    from .sources import layout_of

    sizes = ", ".join(f"{s} {len(items)}" for s, items in source.splits().items())
    if rank == 0:
        click.echo(f"data: {layout_of(source)}, {len(source.classes)} classes; {sizes}", err=True)
    run = functools.partial(
        run_extract, source, bb, out=out, cache_dir=exp.cache_dir, batch_size=exp.batch_size,
        workers=None if exp.workers < 0 else exp.workers, device=exp.device, precision=exp.precision,
        channels_last=exp.channels_last, strict=strict, decoder=exp.decoder, compile=exp.compile,
    )
    if world > 1:
        return _extract_sharded(run, exp, source, bb, out, rank, world, progress=not no_progress)
    result = run(progress=not no_progress)
    if result.reused:
        click.echo(f"reusing {result.path} (cache key {result.cache_key} matches; nothing to recompute)")
        return
    skipped = f", {result.n_skipped} skipped (see `featx info`)" if result.n_skipped else ""
    click.echo(
        f"wrote {result.path}: {result.n_items} items{skipped}; {result.n_new} new in {result.seconds:.1f} s "
        f"= {result.images_per_s:.1f} images/s ({bb.name}, {exp.precision}, {exp.device}, batch {exp.batch_size})"
    )


def _extract_sharded(run, exp, source, bb, out, rank: int, world: int, *, progress: bool) -> None:
    """This process's shard (``run`` is the configured extraction), then, under torchrun, rank 0
    merges every rank's shard into one cache after a barrier."""
    import torch.distributed as dist

    from .extract import cache_path
    from .shards import init_distributed, merge_shards

    if "MASTER_ADDR" not in os.environ:  # RANK/WORLD_SIZE set by hand (batch jobs): no group, no merge
        result = run(progress=progress, shard=(rank, world))
        click.echo(f"shard {rank} of {world} complete: {result.path}; run `featx merge` once every shard is")
        return
    init_distributed(exp.device)
    try:
        result = run(progress=progress and rank == 0, shard=(rank, world),
                     log=lambda msg: click.echo(f"[rank {rank}/{world}] {msg}", err=True))
        final = Path(out) if out else cache_path(exp.cache_dir, source, bb, result.cache_key)
        if not result.reused:
            click.echo(f"[rank {rank}/{world}] wrote {result.path}: {result.n_new} new items in {result.seconds:.1f} s "
                       f"= {result.images_per_s:.1f} images/s", err=True)
        dist.barrier()  # every shard is complete past this line
        if rank == 0:
            if final.exists():
                click.echo(f"reusing {final} (cache key {result.cache_key} matches; nothing to recompute)")
            else:
                merge_shards(final, world=world, key=result.cache_key)
                click.echo(f"wrote {final}: merged {world} shards")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _resolve_cache(cache: str | None, exp) -> Path:
    if cache:
        return Path(cache)
    from .extract import cache_key, cache_path

    source, bb = _source_and_backbone(exp)
    path = cache_path(exp.cache_dir, source, bb, cache_key(source, bb, exp.precision, exp.decoder))
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
    from .reuse import EMBEDDING_META
    from .heads import card_path, head_params, make_head, parse_params
    from .store import open_features

    exp = _experiment(pipeline)
    overrides = {**exp.heads.get(head_name, {}), **parse_params(params)}
    head = make_head(head_name, overrides)
    path = _resolve_cache(cache, exp)
    fs = open_features(path)
    if "train" not in fs:
        raise FeatxError(f"{path} has no train split to fit on")
    X, y = fs["train"].labelled()
    if len(np.unique(y)) < 2:
        raise FeatxError(f"{path}: the train split needs at least two labelled classes to fit a head")
    click.echo(f"fitting {head_name} on {len(y)} x {X.shape[1]} ({len(fs.classes)} classes) from {path}",
               err=True)
    t0 = time.perf_counter()
    try:
        head.fit(X, y)
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
        "n_train": len(y),
        "cache": str(path),
        "cache_key": fs.cache_key,
        "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"),
        "classes": list(fs.classes),
        "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "head_file": target.name,
        "head_sha256": file_sha256(target),
        # what `featx predict` / `export-model` need to embed new images the same way
        "embedding": {k: fs.meta.get(k) for k in EMBEDDING_META if k in fs.meta},
    }
    card_file = card_path(target)
    card_file.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    click.echo(f"saved {target} and {card_file}")


@main.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON instead of text.")
def info(cache, as_json):
    """Describe a cache file: schema, backbone, weights, transform, splits, completeness, skipped items.

    A complete cache is read through once, checking every chunk's checksum. Unfinished
    `.h5.partial` files can be inspected too (without that check: another process may be writing).
    """
    from .store import open_features

    fs = open_features(cache, allow_incomplete=True)
    splits = {}
    for name in fs.splits:
        view = fs[name]
        splits[name] = {"rows": len(view), "items": view.n_items, "skipped": view.skipped}
        if fs.meta.get("complete"):
            view.verify()  # every chunk's checksum: a damaged file is an error here, not wrong numbers later
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


def _grid_overrides(specs, heads) -> dict:
    """``["logreg.C=0.1,1,10", "n_neighbors=10,20"]`` -> ``{head: {param: [values]}}``."""
    from .heads import parse_params

    out: dict[str, dict] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        head, dot, param = name.rpartition(".") if "." in name.split("__")[0] else ("", "", name)
        targets = [head] if dot else list(heads)
        if dot and head not in heads:
            raise FeatxError(f"--grid {spec}: head {head!r} is not among the searched heads ({', '.join(heads)})")
        if not sep or not param:
            raise FeatxError(f"--grid {spec!r} is not [HEAD.]NAME=V1,V2,...")
        parsed = [parse_params([f"v={v}"])["v"] for v in values.split(",") if v.strip()]
        for h in targets:
            out.setdefault(h, {})[param] = parsed
    return out


@main.command()
@click.argument("cache", required=False, type=click.Path(dir_okay=False))
@_pipeline_option
@click.option("--heads", "head_names", default=None,
              help="Heads to search, separated by spaces or commas (default: every head).")
@click.option("--grid", "grid_specs", multiple=True, metavar="[HEAD.]NAME=V1,V2",
              help="Replace one parameter's grid, e.g. logreg.C=0.01,0.1,1 (repeatable; wins over the pipeline's [grid.HEAD]).")
@click.option("--metric", type=click.Choice(["top1", "top5", "mean_per_class", "macro_f1"]), default="top1",
              show_default=True, help="Score that selects the best grid point on the validation split.")
@click.option("--jobs", "-j", type=int, default=-1, show_default=True,
              help="Parallel fits (joblib n_jobs; -1 = all cores).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="k of the stratified k-fold CV used when the cache has no validation split.")
@click.option("--class-weight", type=click.Choice(["balanced"]), default=None,
              help="Weight classes inversely to their frequency in every head that supports it.")
@click.option("--shots", default=None, metavar="K1,K2,...",
              help="Also draw few-shot curves: test top-1 when training the best point on K images per class.")
@click.option("--tries", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random draws per few-shot K (mean and std are reported).")
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Report folder (default reports/<pipeline name or cache name>).")
@click.option("--backend", type=click.Choice(["loky", "dask"]), default="loky", show_default=True,
              help="joblib backend: local processes, or Dask (dask.distributed) for a cluster.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler address (tcp://HOST:PORT); without it --backend dask starts a LocalCluster.")
def grid(cache, pipeline, head_names, grid_specs, metric, jobs, folds, class_weight, shots, tries, out, backend,
         scheduler):
    """Search each head's hyper-parameters on a cache and write report.md, report.html and results.json.

    Protocol: fit on train, select on val (k-fold CV if there is none), refit the best point on
    train+val, evaluate on test once.
    """
    from . import __version__
    from .heads import HEADS
    from .report import write_reports
    from .search import few_shot, grid_points, parse_grid, search_head
    from .store import open_features

    exp = _experiment(pipeline)
    heads = [h for h in (head_names or " ".join(HEADS)).replace(",", " ").split() if h]
    for h in heads:
        if h not in HEADS:
            raise FeatxError(f"unknown head {h!r} (choose from {', '.join(HEADS)})")
    overrides = {h: dict(exp.grids.get(h, {})) for h in heads}
    for h, g in _grid_overrides(grid_specs, heads).items():
        overrides[h].update(g)
    grids = {h: parse_grid(h, overrides[h]) for h in heads}  # every grid checked before any work
    shot_list = []
    if shots:
        try:
            shot_list = [int(k) for k in shots.split(",") if k.strip()]
        except ValueError:
            raise FeatxError(f"--shots {shots!r} is not a list of integers") from None
        if not shot_list or min(shot_list) < 1:
            raise FeatxError(f"--shots {shots!r}: give positive integers, e.g. 1,2,4,8,16")
    path = _resolve_cache(cache, exp)
    fs = open_features(path)
    for split in ("train", "test"):
        if split not in fs:
            raise FeatxError(f"{path} has no {split} split")
    name = exp.name if pipeline else path.stem
    out_dir = Path(out) if out else Path("reports") / name
    with contextlib.ExitStack() as stack:
        if backend == "dask":
            stack.enter_context(_dask(scheduler))
        t_all = time.perf_counter()
        searched = []
        for h in heads:
            t0 = time.perf_counter()
            click.echo(f"searching {h}: {len(grid_points(grids[h]))} points ...", err=True)
            result = search_head(h, fs, grid=grids[h], metric=metric, jobs=jobs, folds=folds,
                                 class_weight=class_weight)
            searched.append((result, time.perf_counter() - t0))
            click.echo(f"{h}: best {result.best_params} val {metric} {result.best_score:.4f}; "
                       f"test top1 {result.test.get('top1', float('nan')):.4f} ({searched[-1][1]:.1f} s)", err=True)
        best_result = max(searched, key=lambda r: r[0].best_score)[0]
        curves = {}
        if shot_list:
            curves[best_result.head] = few_shot(best_result.head, best_result.best_params, fs, shots=shot_list,
                                                tries=tries)
        total = time.perf_counter() - t_all
    results = {
        "pipeline": name, "cache": str(path), "cache_key": fs.cache_key, "backbone": fs.meta.get("backbone"),
        "weights": fs.meta.get("weights"), "precision": fs.meta.get("precision"),
        "feature_dim": fs.meta.get("feature_dim"), "classes": list(fs.classes),
        "sizes": {s: len(fs[s]) for s in fs.splits}, "metric": metric,
        "selection": searched[0][0].selection, "featx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": round(total, 2), "class_weight": class_weight,
        "heads": [dict(r.as_dict(), search_seconds=round(sec, 2)) for r, sec in searched],
        "few_shot": curves,
    }
    paths = write_reports(out_dir, results, _best_arrays(best_result, fs))
    click.echo(f"best head {best_result.head}: test top1 {best_result.test.get('top1', float('nan')):.4f}; "
               f"{total:.1f} s in all")
    click.echo("wrote " + ", ".join(str(p) for p in paths))


def _best_arrays(result, fs) -> dict:
    """Test labels, predictions and probabilities of the best head, for the report's plots."""
    import numpy as np

    from .evaluate import scores

    X, y = fs["test"].labelled()
    est = result.estimator
    s = scores(est, X)
    kind = "predicted probabilities"
    if not hasattr(est, "predict_proba"):
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        kind = "softmax of decision scores (this head has no probabilities)"
    return {"head": result.head, "classes": est.classes_, "y": y, "pred": est.classes_[s.argmax(axis=1)],
            "proba": s, "proba_kind": kind}


@contextlib.contextmanager
def _dask(scheduler: str | None):
    """A Dask client (given scheduler or a LocalCluster) and joblib's Dask backend while it is open."""
    import joblib

    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise FeatxError("--backend dask needs dask.distributed: pip install 'featx[dask]'") from None
    try:
        client = Client(scheduler, timeout="10s") if scheduler else Client(LocalCluster(processes=False))
    except (OSError, TimeoutError) as exc:
        raise FeatxError(f"Dask scheduler {scheduler} does not answer ({exc})") from None
    try:
        with joblib.parallel_config(backend="dask"):
            yield client
    finally:
        client.close()


def _head_and_embedding(head_path: str, trust: bool):
    """A saved head, its card, and the embedding record of the cache it was trained on."""
    from .heads import load_head
    from .store import open_features

    head, card = load_head(head_path, trust=trust)
    embedding = card.get("embedding")
    if not embedding:  # a card written before featx recorded it: the cache still has it
        if not card.get("cache") or not Path(card["cache"]).exists():
            raise FeatxError(f"{head_path}: its card does not say which backbone made its features, and its cache "
                             f"{card.get('cache')} is gone; refit it with this featx")
        embedding = open_features(card["cache"]).meta
    return head, card, embedding


_trust_option = click.option(
    "--trust", is_flag=True,
    help="Load the head even if its sha256 does not match its JSON card (a head is a pickle and runs code "
         "when loaded: only for files you made yourself).")


@main.command()
@click.option("--head", "-H", "head_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="A head saved by `featx fit` (.joblib, with its .json card next to it).")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes to show per image.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Also write the predictions to this .csv or .json file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@_trust_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def predict(head_path, images, top_k, output, batch_size, device, trust, no_progress):
    """Classify new images (files or folders) with a trained head.

    The backbone, weights, layer, transform and precision are the ones recorded for the head's
    cache; featx refuses if they are not available here. Prints the top-k classes with their
    probabilities (or decision scores, for heads without probabilities). Unreadable images are
    reported and skipped.
    """
    import csv

    from .reuse import backbone_for, embed_images, image_paths, predict_images

    if output and Path(output).suffix.lower() not in (".csv", ".json"):
        raise FeatxError(f"--output {output}: give a .csv or .json file name")
    _check_device(device)
    head, card, emb = _head_and_embedding(head_path, trust)
    paths = image_paths(images)
    if not paths:
        raise FeatxError("no images found in " + ", ".join(images))
    bb = backbone_for(emb, device=device)
    with click.progressbar(length=len(paths), label="predicting", file=sys.stderr,
                           hidden=no_progress or len(paths) < 2 * batch_size) as bar:
        X, good, bad = embed_images(bb, paths, device=device, precision=emb.get("precision", "fp32"),
                                    batch_size=batch_size, decoder=emb.get("decoder", "pil"), progress=bar.update)
    preds = predict_images(head, card.get("classes") or [], X, good, k=top_k) if len(good) else []
    for p in preds:
        shown = ", ".join(f"{label} {score:.3f}" for label, score in zip(p.labels, p.scores))
        click.echo(f"{p.path}\t{shown}")
    for path, reason in bad:
        click.echo(f"featx: skipped unreadable image {path}: {reason}", err=True)
    if output:
        rows = [{"path": p.path, "rank": r + 1, "label": label, p.kind.replace(" ", "_"): score}
                for p in preds for r, (label, score) in enumerate(zip(p.labels, p.scores))]
        rows += [{"path": path, "rank": "", "label": "", "error": reason} for path, reason in bad]
        out = Path(output)
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps({"head": str(head_path), "kind": preds[0].kind if preds else None,
                                       "predictions": [p.__dict__ for p in preds],
                                       "unreadable": [{"path": a, "reason": b} for a, b in bad]}, indent=2,
                                      ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            fields = ["path", "rank", "label", "probability", "decision_score", "error"]
            with open(out, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
        click.echo(f"wrote {out}", err=True)
    click.echo(f"{len(preds)} predicted, {len(bad)} unreadable", err=True)


@main.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours per image.")
@click.option("--split", "splits", multiple=True, help="Search only this split (repeatable; default all).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
def neighbors(cache, images, k, splits, device):
    """The cached items most similar (cosine) to each image, embedded with the cache's own backbone."""
    from .reuse import backbone_for, embed_images, image_paths, nearest
    from .store import open_features

    _check_device(device)
    fs = open_features(cache)
    for s in splits:
        fs[s]  # noqa: B018 - an unknown split is one clear error
    bb = backbone_for(fs.meta, device=device)
    X, good, bad = embed_images(bb, image_paths(images), device=device, precision=fs.meta.get("precision", "fp32"),
                                decoder=fs.meta.get("decoder", "pil"))
    for path, hits in zip(good, nearest(fs, X, k, splits=splits or None) if len(good) else []):
        click.echo(path)
        for h in hits:
            click.echo(f"  {h.rank:>2}. {h.similarity:.4f}  {h.split}/{h.row}  {h.id}  {h.label}")
    for path, reason in bad:
        click.echo(f"featx: skipped unreadable image {path}: {reason}", err=True)


@main.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["npz", "npy", "parquet"]), default="npz", show_default=True,
              help="npz: one file; npy: a folder of <split>_X/_y/_ids.npy and classes.json; parquet: one table "
                   "(needs pyarrow).")
@click.option("--out", "-o", type=click.Path(), help="Output file or folder (default next to the cache).")
def export(cache, fmt, out):
    """Write a cache's features, labels, ids and class names for tools that do not read HDF5."""
    from .reuse import export_arrays
    from .store import open_features

    fs = open_features(cache)
    target = Path(out) if out else Path(cache).with_suffix("" if fmt == "npy" else f".{fmt}")
    for p in export_arrays(fs, target, fmt):
        click.echo(f"wrote {p}")


@main.command("export-model")
@click.option("--head", "-H", "head_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="A linear head saved by `featx fit` (logreg, svm, torch-linear).")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript",
              show_default=True, help="TorchScript (.pt) or ONNX (needs the onnx package).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Output file (default <head>.pt / .onnx).")
@_trust_option
def export_model(head_path, fmt, out, trust):
    """One deployable module: preprocessed images (N, 3, H, W) -> backbone -> the head's class scores.

    Feed it what the recorded transform produces (resize, crop, normalise); its argmax is featx's
    prediction. Linear heads only (their scaling is folded into the last layer).
    """
    from .reuse import backbone_for, export_model as run_export

    head, card, emb = _head_and_embedding(head_path, trust)
    bb = backbone_for(emb)
    target = Path(out) if out else Path(head_path).with_suffix(".pt" if fmt == "torchscript" else ".onnx")
    run_export(head, bb, target, fmt)
    click.echo(f"wrote {target}: input (N, {', '.join(map(str, bb.preprocess.get('input_size', [])))}) "
               f"preprocessed images, output (N, {len(head.classes_)}) scores for {card.get('classes')}")


@main.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--world", type=click.IntRange(min=1), help="Number of shards to expect (default: the one run found).")
def merge(cache, world):
    """Merge the shard files of a sharded extraction (CACHE.shard-<rank>-of-<world>.h5) into CACHE.

    `torchrun ... -m featx extract` merges by itself when every rank finishes; use this after
    ranks ran as separate jobs (e.g. one batch job per shard with RANK and WORLD_SIZE set).
    Refuses while a shard is missing or unfinished; deletes the shards once CACHE is complete.
    """
    from .shards import merge_shards

    path = merge_shards(cache, world=world)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True,
              help="Markdown table or CSV.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the table here instead of stdout.")
def report(results, fmt, out):
    """Merge results.json files of several grid runs into one table (one row per pipeline and head)."""
    from .report import merge_results, render_rows

    text = render_rows(merge_results(results), fmt)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)
