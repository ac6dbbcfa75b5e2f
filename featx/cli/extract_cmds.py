"""``featx extract`` (also under torchrun) and ``featx merge``."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import click

from ..pipeline import build_backbone, build_source, experiment
from ..options import BackboneOptions, ExtractOptions
from ..util import OFFLINE_ENV
from .base import (check_output, echo, existing_file, out_option, pipeline_option, progress_renderer, setting_option,
                   source_options)

log = logging.getLogger("featx")

__all__ = ["extract", "merge"]


@click.command()
@pipeline_option
@source_options("data", "root", "download", "val_fraction", "test_fraction", "seed", "limit")
@setting_option(BackboneOptions, "name", "-b")
@setting_option(BackboneOptions, "weights", "-w")
@setting_option(BackboneOptions, "weights_file")
@setting_option(BackboneOptions, "layer", "--layers")
@setting_option(BackboneOptions, "pooling")
@out_option("Cache file to write (default <cache-dir>/<dataset>/<backbone>-<key>.h5).")
@setting_option(ExtractOptions, "cache_dir")
@setting_option(ExtractOptions, "reuse")
@setting_option(ExtractOptions, "fingerprint")
@setting_option(ExtractOptions, "views")
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
    if out:  # a cache file (this run's, to reuse or resume), never the data or another kind of file
        check_output(out, {"the data": exp.source.data if Path(exp.source.data).is_file() else None},
                     replaces=("hdf5",))
    from ..backbones.names import parse_backbone, quick_check

    if not exp.backbone.name.startswith(("timm:", "clip:")):  # a misspelt backbone or weights: refused before torch loads
        quick_check(*parse_backbone(exp.backbone.name, exp.backbone.weights))
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
        from ..cache.reuse import check_donor
        from ..extract import spec_for

        check_donor(exp.extract.reuse, spec_for(source, bb, exp.extract.precision, exp.extract.decoder))
    from ..data.layout import layout_of

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
        echo(f"reusing {result.path} (cache key {result.cache_key} matches; nothing to recompute)")
    if exp.extract.views:
        _extract_views(source, bb, exp.extract, result, progress)
    if result.reused:
        return
    skipped = f", {result.n_skipped} skipped (see `featx info`)" if result.n_skipped else ""
    o = exp.extract
    reused = "".join(f"reused {r['rows']} rows from {r['path']}, " for r in result.reused_from)
    rate = f" in {result.seconds:.1f} s = {result.images_per_s:.1f} images/s" if result.n_new else ""
    echo(
        f"wrote {result.path}: {result.n_items} items{skipped}; {reused}{'embedded ' if reused else ''}"
        f"{result.n_new} new{rate} ({bb.name}, {o.precision}, {o.device}, batch {o.batch_size}"
        f"{'; ' + result.pipeline if result.pipeline else ''})"
    )


def _extract_views(source, bb, options, result, progress) -> None:
    """``--views K``: view k of every train image into ``<cache>.view<k>.h5`` (each a cache of its own, keyed by
    the view, the seed and the main cache's key)."""
    from ..data.views import AugmentedViews, view_path
    from ..extract import extract as run_extract

    plain = dataclasses.replace(options, views=0, decoder="pil", reuse="none")
    for k in range(1, options.views + 1):
        views = AugmentedViews(source, k, of=result.cache_key, seed=source.seed)
        done = run_extract(views, bb, plain, out=view_path(result.path, k), progress=progress)
        echo(f"{'reusing' if done.reused else 'wrote'} {done.path}: view {k} of {done.n_items} train items")


def _extract_sharded(source, bb, options, *, out, rank: int, world: int, progress) -> None:
    """This process's shard, then, under torchrun, rank 0 merges every rank's shard into one cache
    after a barrier."""
    import torch.distributed as dist

    from ..cache.shards import init_distributed, join_shards
    from ..cache.spec import cache_path
    from ..extract import extract as run_extract

    if "MASTER_ADDR" not in os.environ:  # RANK/WORLD_SIZE set by hand (batch jobs): no group, no merge
        result = run_extract(source, bb, options, out=out, progress=progress, shard=(rank, world))
        echo(f"shard {rank} of {world} complete: {result.path}; run `featx merge` once every shard is")
        return
    init_distributed(options.device)
    try:
        result = run_extract(source, bb, options, out=out, progress=progress, shard=(rank, world))
        final = Path(out) if out else cache_path(options.cache_dir, source.name, bb.name, result.cache_key)
        if not result.reused:
            echo(f"[rank {rank}/{world}] wrote {result.path}: {result.n_new} new items in {result.seconds:.1f} s "
                       f"= {result.images_per_s:.1f} images/s", err=True)
        dist.barrier()  # every shard is complete past this line
        if rank == 0:
            if final.exists():
                echo(f"reusing {final} (cache key {result.cache_key} matches; nothing to recompute)")
            else:
                join_shards(final, world=world, key=result.cache_key)
                echo(f"wrote {final}: {world} shards joined by a virtual dataset (no copy: keep the shard files "
                     "beside it)")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@click.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@click.option("--world", type=click.IntRange(min=1), help="Number of shards to expect (default: the one run found).")
@click.option("--join", is_flag=True, help="Join the shards by an HDF5 virtual dataset instead of copying them "
                                             "(what torchrun does by itself): no copy, the shards stay beside CACHE.")
def merge(cache, world, join):
    """Merge the shard files of a sharded extraction (CACHE.shard-<rank>-of-<world>.h5) into CACHE.

    `torchrun ... -m featx extract` joins them by itself (a virtual dataset) when every rank finishes; use this
    after ranks ran as separate jobs (e.g. one batch job per shard with RANK and WORLD_SIZE set). Refuses while a
    shard is missing or unfinished; copies the rows into one file and deletes the shards once CACHE is complete
    (--join: keeps them and copies no features).
    """
    from ..cache.shards import join_shards, merge_shards

    path = (join_shards if join else merge_shards)(cache, world=world)
    echo(f"wrote {path}{' (joined: keep the shard files beside it)' if join else ''}")
