"""``featx adapt``: a head for a target domain from a labelled source cache and an unlabelled target cache."""

from __future__ import annotations

from pathlib import Path

import click

from .base import REPORT_FILES, check_report_folder, echo, existing_file, out_option

__all__ = ["adapt"]


@click.command()
@click.argument("source_cache", type=click.Path(dir_okay=False))
@click.argument("target_cache", type=click.Path(dir_okay=False))
@click.option("--head", "-H", "head_name", default="logreg", show_default=True,
              help="Head to train on the adapted source features; `featx heads` lists them.")
@click.option("--param", "-P", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a head parameter, e.g. C=0.1 (repeatable).")
@click.option("--method", "-m", "methods", multiple=True, default=("all",), show_default=True,
              help="Adaptation method: none (source-only), standardize, coral, subspace, or all (repeatable).")
@click.option("--target-shots", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also train on K labelled target images per class (few-shot); they are not scored.")
@click.option("--components", type=click.IntRange(min=1), default=64, show_default=True,
              help="Subspace dimension of the subspace method (capped by the features and rows).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the target shots and the PAD sample.")
@out_option("Report folder (default reports/adapt-<source>-<target>); the adapted heads are saved there too.",
            file=False)
def adapt(source_cache, target_cache, head_name, params, methods, target_shots, components, seed,
          out):  # one parameter per option: click's convention
    """Adapt a head from SOURCE_CACHE (labelled) to TARGET_CACHE (its labels, if any, only score the result).

    Both caches must hold the same features (backbone, weights, transform). Writes adapt.json, report.md,
    report.html and one head per method (<method>.skops + card; `featx predict` applies its adaptation to
    new target images).
    """
    existing_file(source_cache, "source cache")
    existing_file(target_cache, "target cache")
    from ..adapt.maps import METHODS, check_methods
    from ..heads.registry import check_head, make_head, parse_params

    check_head(head_name)
    wanted = check_methods([m for v in methods for m in v.replace(",", " ").split()])
    overrides = parse_params(params)
    make_head(head_name, overrides)  # bad parameters fail here, before the caches are read
    out_dir = Path(out) if out else Path("reports") / f"adapt-{Path(source_cache).stem}-{Path(target_cache).stem}"
    heads_saved = tuple(f"{m}{x}" for m in (METHODS if "all" in wanted else wanted) for x in (".skops", ".json"))
    check_report_folder(out_dir, REPORT_FILES + ("adapt.json",) + heads_saved,
                        {"the source cache": source_cache, "the target cache": target_cache})
    from ..adapt.report import write_adapt_reports
    from ..adapt.run import run_adaptation, save_adapted_heads
    from .multilabel import single_label_only

    for cache in (source_cache, target_cache):
        single_label_only(cache, "featx adapt")

    record, heads = run_adaptation(source_cache, target_cache, head=head_name, params=overrides, methods=wanted,
                                   target_shots=target_shots, components=components, seed=seed)
    paths = write_adapt_reports(out_dir, record)
    save_adapted_heads(record, heads, out_dir)
    for r in record["methods"]:
        t = r.get("target")
        echo(f"{r['method']:<12} target top-1 {t['top1']:.4f} ({r['gain_over_source_only']:+.4f} vs none, 95% CI "
             f"{r['gain_ci'][0]:+.4f} .. {r['gain_ci'][1]:+.4f}: {r['verdict']}); "
             f"proxy A-distance {r['proxy_a_distance']:.3f}" if t else
                   f"{r['method']:<12} proxy A-distance {r['proxy_a_distance']:.3f} (target unlabelled)")
    c = record["ceiling"]
    echo(f"proxy A-distance before: {record['proxy_a_distance_before']:.3f}"
               + (f"; ceiling (target labels): {c['top1']:.4f}" if c else ""))
    if record.get("choice"):
        ch = record["choice"]
        echo(f"best: {ch['chosen']}" + (f" (tied within one standard error with "
                                         f"{', '.join(m for m in ch['tied'] if m != ch['chosen'])}; the simplest chosen)"
                                         if len(ch["tied"]) > 1 else ""))
    echo("wrote " + ", ".join(str(p) for p in paths) + f" and {len(heads)} heads in {out_dir}")
