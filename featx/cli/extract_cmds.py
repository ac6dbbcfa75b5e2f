"""``featx extract`` (also under torchrun) and ``featx merge``; the pipeline helpers other commands share."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import click

from ..errors import FeatxUsageError
from ..options import BackboneOptions, ExtractOptions, SourceOptions
from ..util import OFFLINE_ENV
from .base import existing_file, out_option, pipeline_option, progress_renderer, setting_option

log = logging.getLogger("featx")

__all__ = ["extract", "merge", "experiment", "build_source", "build_backbone", "check_cache_exists", "resolve_cache"]


def experiment(pipeline: str | None, **overrides):
    """The pipeline file's experiment (or the defaults) with command-line overrides, all validated alike."""
    from ..pipeline import Experiment, load_pipeline

    exp = load_pipeline(pipeline) if pipeline else Experiment()
    return exp.override(**overrides)


def build_source(exp, *, allow_outside: bool = False):
    from ..data.sources import make_source

    s = exp.source
    return make_source(s.data, root=s.root, download=s.download, val_fraction=s.val_fraction,
                       test_fraction=s.test_fraction, seed=s.seed, limit=s.limit, allow_outside=allow_outside)


def build_backbone(exp, *, device: str = "cpu"):
    from ..backbones.registry import load_backbone

    return load_backbone(exp.backbone.name, exp.backbone.weights, device=device, layer=exp.backbone.layer)


def check_cache_exists(cache: str | None, exp) -> None:
    """Fail fast, before any heavy import: the named cache file exists, or the pipeline's cache folder
    holds at least one cache of its backbone (nothing is unpacked, built or downloaded to find out)."""
    if cache:
        existing_file(cache, "cache file", "; run `featx extract` first, or name an existing .h5")
        return
    folder = Path(exp.extract.cache_dir)
    name = exp.backbone.name.partition(":")[0] if not exp.backbone.name.startswith("timm:") else exp.backbone.name
    name = name.replace(":", "-")
    if not any(folder.glob(f"*/{name}-*.h5")):
        raise FeatxUsageError(f"no {name} cache under {folder}/ for this pipeline yet; run `featx extract` "
                              "(make features) first, or name a cache file")


def resolve_cache(cache: str | None, exp) -> Path:
    """The cache file named on the command line, or the one of the pipeline's settings (its key
    computed from the source and backbone, as `featx extract` does)."""
    check_cache_exists(cache, exp)
    if cache:
        return Path(cache)
    from ..extract import cache_key, cache_path

    folder = Path(exp.extract.cache_dir)
    source, bb = build_source(exp), build_backbone(exp)
    source.splits()
    path = cache_path(folder, source, bb, cache_key(source, bb, exp.extract.precision, exp.extract.decoder))
    if not path.exists():
        raise FeatxUsageError(f"no cache for these settings yet ({path}){_nearest_cache(path.parent, source, bb, exp)}")
    return path


def _nearest_cache(folder: Path, source, bb, exp) -> str:
    """What to do when the settings' cache is missing: name a complete cache of the same backbone and weights
    in ``folder`` and the settings that differ (as options to pass), or say to run `featx extract`."""
    from ..cache.store import open_features

    want = source.describe()
    best = None
    for other in sorted(folder.glob(f"{bb.name.replace(':', '-')}-*.h5")):
        try:
            meta = open_features(other).meta
        except Exception:  # a damaged or foreign file: not a candidate
            continue
        if (meta.get("backbone"), meta.get("weights"), meta.get("layer")) != (bb.name, bb.weights,
                                                                               bb.layer or "penultimate"):
            continue
        have = meta.get("source") or {}
        diff = {k: have.get(k) for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)}
        diff.pop("carve_rule", None) if "carve_rule" not in have else None
        if best is None or len(diff) < len(best[1]):
            best = (other, diff)
    if best is None or not best[1]:
        return "; run `featx extract` (make features) first with the same options, or name the cache file"
    other, diff = best
    options = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in diff.items() if k in {f.name for f in
                        dataclasses.fields(SourceOptions)})
    differs = ", ".join(f"{k} {v!r} there, {want.get(k)!r} here" for k, v in diff.items())
    return (f"; {other} has the same backbone but other settings ({differs}): pass "
            f"{options or 'the same options'} to use it, or name it")


@click.command()
@pipeline_option
@setting_option(SourceOptions, "data")
@setting_option(SourceOptions, "root")
@setting_option(SourceOptions, "download")
@setting_option(SourceOptions, "val_fraction")
@setting_option(SourceOptions, "test_fraction")
@setting_option(SourceOptions, "seed")
@setting_option(SourceOptions, "limit")
@setting_option(BackboneOptions, "name", "-b")
@setting_option(BackboneOptions, "weights", "-w")
@setting_option(BackboneOptions, "layer")
@out_option("Cache file to write (default <cache-dir>/<dataset>/<backbone>-<key>.h5).")
@setting_option(ExtractOptions, "cache_dir")
@setting_option(ExtractOptions, "reuse")
@setting_option(ExtractOptions, "batch_size")
@setting_option(ExtractOptions, "workers")
@setting_option(ExtractOptions, "device")
@setting_option(ExtractOptions, "precision")
@setting_option(ExtractOptions, "decoder")
@setting_option(ExtractOptions, "compile")
@setting_option(ExtractOptions, "channels_last")
@click.option("--offline", is_flag=True, help="Never download weights or data; fail with what to fetch instead.")
@setting_option(ExtractOptions, "strict")
@click.option("--allow-outside", is_flag=True,
              help="Let a CSV manifest list files outside its own folder (refused by default).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar (or, in a log file, the progress lines).")
def extract(pipeline, out, offline, allow_outside, no_progress, name, **settings):
    """Run a frozen backbone over a dataset once and write its embeddings to an HDF5 cache.

    A complete cache with the same key is reused; an interrupted run resumes where it stopped.
    """
    if pipeline:
        existing_file(pipeline, "pipeline file")
    if offline:
        os.environ[OFFLINE_ENV] = "1"
    exp = experiment(pipeline, name=name, **settings)
    if name and not settings.get("weights"):  # another backbone than the pipeline's: not its weights either
        exp = dataclasses.replace(exp, backbone=dataclasses.replace(exp.backbone, weights=None))
    source = build_source(exp, allow_outside=allow_outside)  # a wrong --data fails here, before torch loads
    from ..cache.shards import dist_env
    from ..extract import check_device

    rank, world, local_rank = dist_env()  # torchrun: one shard per process, merged at the end
    if world > 1 and exp.extract.device == "cuda":
        exp = exp.override(device=f"cuda:{local_rank}")
    check_device(exp.extract.device)
    bb = build_backbone(exp, device=exp.extract.device)  # a wrong backbone, weights or layer fails here
    source.splits()
    if str(exp.extract.reuse) not in ("auto", "none"):  # a --reuse cache of other features: refused before any work
        from ..cache.reuse import check_donor, feature_record
        from ..extract import plan_extraction

        check_donor(exp.extract.reuse, feature_record(plan_extraction(source, bb, exp.extract, out=out).attrs))
    from ..data.sources import layout_of

    sizes = ", ".join(f"{s} {len(items)}" for s, items in source.splits().items())
    if rank == 0:
        carved = " and ".join(source.carved)
        how = (f" ({carved} carved from train by a hash of each item's id and seed {exp.source.seed}: stable as the "
               "data grows)" if carved else "")
        log.info(f"data: {layout_of(source)}, {len(source.classes)} classes; {sizes}{how}")
    progress = progress_renderer(enabled=not no_progress and rank == 0)
    if world > 1:
        return _extract_sharded(source, bb, exp.extract, out=out, rank=rank, world=world, progress=progress)
    from ..extract import extract as run_extract

    result = run_extract(source, bb, exp.extract, out=out, progress=progress)
    if result.reused:
        click.echo(f"reusing {result.path} (cache key {result.cache_key} matches; nothing to recompute)")
        return
    skipped = f", {result.n_skipped} skipped (see `featx info`)" if result.n_skipped else ""
    o = exp.extract
    reused = "".join(f"reused {r['rows']} rows from {r['path']}, " for r in result.reused_from)
    click.echo(
        f"wrote {result.path}: {result.n_items} items{skipped}; {reused}{'embedded ' if reused else ''}"
        f"{result.n_new} new in {result.seconds:.1f} s "
        f"= {result.images_per_s:.1f} images/s ({bb.name}, {o.precision}, {o.device}, batch {o.batch_size}"
        f"{'; ' + result.pipeline if result.pipeline else ''})"
    )


def _extract_sharded(source, bb, options, *, out, rank: int, world: int, progress) -> None:
    """This process's shard, then, under torchrun, rank 0 merges every rank's shard into one cache
    after a barrier."""
    import torch.distributed as dist

    from ..cache.shards import init_distributed, merge_shards
    from ..extract import cache_path
    from ..extract import extract as run_extract

    if "MASTER_ADDR" not in os.environ:  # RANK/WORLD_SIZE set by hand (batch jobs): no group, no merge
        result = run_extract(source, bb, options, out=out, progress=progress, shard=(rank, world))
        click.echo(f"shard {rank} of {world} complete: {result.path}; run `featx merge` once every shard is")
        return
    init_distributed(options.device)
    try:
        result = run_extract(source, bb, options, out=out, progress=progress, shard=(rank, world))
        final = Path(out) if out else cache_path(options.cache_dir, source, bb, result.cache_key)
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


@click.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--world", type=click.IntRange(min=1), help="Number of shards to expect (default: the one run found).")
def merge(cache, world):
    """Merge the shard files of a sharded extraction (CACHE.shard-<rank>-of-<world>.h5) into CACHE.

    `torchrun ... -m featx extract` merges by itself when every rank finishes; use this after
    ranks ran as separate jobs (e.g. one batch job per shard with RANK and WORLD_SIZE set).
    Refuses while a shard is missing or unfinished; deletes the shards once CACHE is complete.
    """
    from ..cache.shards import merge_shards

    path = merge_shards(cache, world=world)
    click.echo(f"wrote {path}")
