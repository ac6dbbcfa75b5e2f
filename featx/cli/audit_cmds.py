"""``featx audit``: near-duplicates and leakage, likely label errors and outliers, from a cache's embeddings."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FeatxUsageError
from ..options import CV_FOLDS, DATASETS_ROOT, INDEXES, RELABEL_MIN_CONFIDENCE
from .base import (REPORT_FILES, check_output, check_report_folder, echo, existing_file, force_option, out_option,
                   progress_renderer)

__all__ = ["audit", "map_"]


@click.command()
@click.argument("cache", type=click.Path(dir_okay=False))
@out_option("Report folder (default reports/audit-<cache name>).", file=False)
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Embedding cosine similarity at or above which two distinct pictures are reported as "
                   "look-alikes (default 0.95).")
@click.option("--copy-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Registered pixel correlation at or above which two items are copies of one picture (default "
                   "0.988, measured: docs/audit.md).")
@click.option("--pixels/--no-pixels", default=True, show_default=True,
              help="Check candidate pairs on the images themselves (read from the cache's source) to find copies; "
                   "without it only identical embeddings count as copies.")
@click.option("--index", type=click.Choice(list(INDEXES)), default="exact", show_default=True,
              help="Nearest-neighbour search: " + "; ".join(f"{k}: {v}" for k, v in INDEXES.items()) + ".")
@click.option("--folds", type=click.IntRange(min=2), default=CV_FOLDS, show_default=True,
              help="Folds of the out-of-fold probabilities the label check ranks.")
@click.option("--write-manifest", "manifest", type=click.Path(dir_okay=False), default=None,
              help="Also write a CSV manifest of the items without the flagged ones (featx extract --data reads it; "
                   "image files are never deleted or edited).")
@click.option("--relabel", is_flag=True, help="In the manifest, give likely label errors their suggested label "
                                              "instead of leaving them out (only suggestions at least "
                                              "--relabel-min-confidence sure; the others are left out).")
@click.option("--exclude-quality", "exclude_quality", default="", metavar="CHECK,...",
              help="Also leave out of --write-manifest the items of these image-quality checks (dark, light, blurry, "
                   "low_information, odd_aspect_ratio, odd_size, grayscale); none by default.")
@click.option("--relabel-min-confidence", type=click.FloatRange(0.0, 1.0), default=RELABEL_MIN_CONFIDENCE,
              show_default=True, help="The least out-of-fold probability of the suggested label for --relabel to "
                                      "apply it.")
@click.option("--root", default=DATASETS_ROOT, show_default=True,
              help="Where torchvision datasets are kept (to read their images).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar (or, in a log file, the progress lines).")
@force_option
def audit(cache, out, threshold, copy_threshold, pixels, index, folds, manifest, relabel, exclude_quality,
          relabel_min_confidence, root, no_progress, force):  # one parameter per option: click's convention
    """Audit a dataset through its cached embeddings: copies of one picture (and train/test leakage), look-alikes,
    likely label errors, outliers. Writes audit.json, report.md and report.html (with thumbnails of what it flags)."""
    existing_file(cache, "cache file")
    from ..audit.duplicates import DUPLICATE_THRESHOLD
    from ..audit.report import summary_lines, write_audit_reports
    from ..audit.run import check_manifest_target, run_audit, write_manifest
    from ..cache.store import open_features

    from ..audit.quality import CHECKS

    quality = tuple(c.strip() for c in exclude_quality.split(",") if c.strip())
    unknown = [c for c in quality if c not in CHECKS]
    if unknown:
        raise FeatxUsageError(f"--exclude-quality {unknown[0]!r}: the checks are {', '.join(CHECKS)}")
    if quality and not manifest:
        raise FeatxUsageError("--exclude-quality is for --write-manifest")
    fs = open_features(cache)
    from .multilabel import single_label_only

    single_label_only(fs, "featx audit")
    if manifest:  # the manifest never replaces the cache, the manifest the data came from, or an image
        data_manifest = (fs.meta.get("source") or {}).get("manifest")
        check_output(manifest, {"the cache": cache, "the manifest of its data": data_manifest}, replaces=("text",),
                     force=force)
        check_manifest_target(fs, manifest)
    out_dir = check_report_folder(Path(out) if out else Path("reports") / f"audit-{Path(cache).stem}",
                                  REPORT_FILES + ("audit.json",), {"the cache": cache, "the manifest": manifest})
    record = run_audit(fs, threshold=DUPLICATE_THRESHOLD if threshold is None else threshold, index=index,
                       folds=folds, pixels=pixels, copy_threshold=copy_threshold, root=root,
                       progress=progress_renderer(enabled=not no_progress))
    paths = write_audit_reports(out_dir, record, fs, root=root)
    for line in summary_lines(record):
        echo(line)
    echo("wrote " + ", ".join(str(p) for p in paths))
    if manifest:
        counts = write_manifest(record, fs, manifest, relabel=relabel, min_confidence=relabel_min_confidence,
                                root=root, quality=quality)
        out_ = counts["left_out"]
        relabelled = (f"; {counts['relabelled']} relabelled (suggestion confidence >= {relabel_min_confidence:g})"
                      if relabel else "")
        echo(f"wrote {manifest}: {counts['written']} items; left out {sum(out_.values())} ({out_['copy']} copies, "
             f"{out_['label']} likely label errors, {out_['outlier']} outliers"
             f"{', ' + str(out_['quality']) + ' by quality checks' if quality else ''}){relabelled}; "
             f"featx extract --data {manifest} reads it")


@click.command("map")
@click.argument("cache", type=click.Path(dir_okay=False))
@out_option("Folder for map.html and map.json (default reports/map-<cache name>).", file=False)
@click.option("--head-file", "-F", "head_path", type=click.Path(dir_okay=False), default=None,
              help="A head fitted on this cache (featx fit): colour the points by right / wrong too.")
@click.option("--audit", "audit_file", type=click.Path(dir_okay=False), default=None,
              help="The audit.json of this cache (default: reports/audit-<cache stem>/audit.json when it is this "
                   "cache's): colour the points by what it flagged too.")
@click.option("--sample", type=click.IntRange(min=10), default=5000, show_default=True,
              help="At most this many points, a seeded sample in proportion to the splits (said on the page).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and the projection.")
@click.option("--root", default=DATASETS_ROOT, show_default=True,
              help="Where torchvision datasets are kept (to read the thumbnails).")
@force_option
def map_(cache, out, head_path, audit_file, sample, seed, root, force):
    """The embeddings on a 2-D map (UMAP, or PCA without umap-learn): one self-contained map.html, points coloured by
    label, split, right/wrong (with a head) or audit flag, each with its thumbnail on hover; map.json for machines."""
    existing_file(cache, "cache file")
    if head_path:
        existing_file(head_path, "head file")
    from ..audit.embedmap import build_map, write_map
    from ..audit.leaks import find_audit
    from ..cache.store import open_features

    fs = open_features(cache)
    out_dir = check_report_folder(Path(out) if out else Path("reports") / f"map-{Path(cache).stem}",
                                  ("map.html", "map.json"),
                                  {"the cache": cache, "the head": head_path, "the audit": audit_file}, replaces=("text",))
    head = None
    if head_path:
        from ..heads.persist import load_head

        head, card = load_head(head_path)
        if card and card.get("cache_key") not in (None, fs.cache_key):
            raise FeatxUsageError(f"{head_path} was fitted on another cache (key {card.get('cache_key')}, this one "
                                  f"{fs.cache_key})")
    found = find_audit(cache, fs.cache_key, audit_file)
    record = build_map(fs, sample=sample, seed=seed, head=head, audit=found[1] if found else None, root=root)
    paths = write_map(out_dir, record)
    echo(f"{record['n_points']} points{' (sampled)' if record['sampled'] else ''}; {record['method']}; "
         f"{record['seconds']:.1f} s")
    echo("wrote " + ", ".join(str(p) for p in paths))
