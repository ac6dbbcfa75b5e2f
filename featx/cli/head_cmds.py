"""``featx fit``, ``featx grid``, ``featx report`` and ``featx rank``: heads on a cache, searches, merged tables,
backbones ranked on a sample."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click

from ..errors import FeatxError, FeatxUsageError
from ..options import (CLASS_WEIGHTS, CV_FOLDS, GRID_BACKENDS, METRICS, RANK_SAMPLE, REPORT_FORMATS,
                       ExtractOptions, SourceOptions)
from .base import (REPORT_FILES, check_output, check_report_folder, echo, existing_file, force_option, out_option,
                   pipeline_option, progress_renderer, setting_option)
from .baselines import fit_baselines, grid_baselines
from .leaks import echo_leaks, leak_options, leaked_for
from ..pipeline import check_cache_exists, experiment, resolve_cache

__all__ = ["fit", "grid", "report", "rank"]


def _experiment_with_cache(cache: str | None, pipeline: str | None, limit: int | None = None):
    """The pipeline's experiment (``limit``: the extraction's --limit), once the named files and a cache to work
    on are known to exist (checked before anything heavy is imported)."""
    if pipeline:
        existing_file(pipeline, "pipeline file")
    exp = experiment(pipeline, limit=limit)
    check_cache_exists(cache, exp)
    return exp


memory_budget_option = click.option(
    "--memory-budget", default=None, metavar="SIZE",
    help="Memory the train split's features may take, e.g. 2GB (default: half of this machine's RAM). Over it, "
         "featx fit trains logreg/svm streaming (same objective and solution, one block in memory); featx grid, "
         "which needs the split in memory, refuses.")


def _head_names(values) -> list[str]:
    """``--head a --head b,c`` / ``--heads "a b"`` -> ``[a, b, c]``."""
    return [h for v in values for h in v.replace(",", " ").split() if h]


@click.command()
@click.argument("cache", required=False, type=click.Path(dir_okay=False))
@pipeline_option
@click.option("--head", "--heads", "-H", "head_name", default="svm", show_default=True,
              help="Head to train; `featx heads` lists them (--heads is the same option, for symmetry with grid).")
@click.option("--param", "-P", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a head parameter, e.g. C=0.1 or kmap__gamma=1e-3 (repeatable; wins over the pipeline).")
@out_option("Where to save the fitted head (default next to the cache: <cache>.<head>.skops, plus .json card).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also fit the head on random-init features of the same architecture and on raw pixels (same "
                   "items, a sample of at most 2,000 train / 2,000 test rows; cached) and give the transfer verdict "
                   "(helps / hurts / can't tell, with its interval).")
@click.option("--tune/--no-tune", default=True, show_default=True,
              help="Choose the head's main parameter (C for logreg/svm/rbf-svm, n_neighbors for knn, weight_decay for "
                   "torch-linear) on the val split (k-fold CV without one) over the head's own grid before fitting; "
                   "a value given with --param or the pipeline is kept as it is.")
@click.option("--layers", "layers", default="all", show_default=True,
              help="For a cache of several layers (featx extract --layers stages): which the head uses: all, last, or "
                   "names from the cache's layer_parts (A,B,...); the head keeps those columns itself.")
@click.option("--views/--no-views", default=True, show_default=True,
              help="Train on the augmented views of the train images too, when the cache has them (featx extract "
                   "--views K); val and test stay the centre view.")
@click.option("--templates", type=click.Path(dir_okay=False), default=None,
              help="For --head zeroshot: a text file of prompt templates, one per line with {} where the class name "
                   "goes (default: CLIP's 80 ImageNet templates).")
@memory_budget_option
@click.option("--update", "update", type=click.Path(dir_okay=False), default=None, metavar="HEAD",
              help="Fold CACHE's labelled train rows (new images, new classes) into this saved streaming head (slda, "
                   "ncm) without its old rows; saved as a new head (default <CACHE>.<head>.skops), its card recording "
                   "the update.")
@click.option("--retune", is_flag=True,
              help="With --update on an slda head: choose its shrinkage again on CACHE's val rows (no old rows needed; "
                   "without it the head equals one fitted on all its rows at once).")
@leak_options
@setting_option(SourceOptions, "limit")
@force_option
def fit(cache, pipeline, head_name, params, out, baselines, tune, layers, views, templates, memory_budget, update,
        retune, exclude_leaked, audit_file, limit, force):
    """Train a head on the cached train split; report val and test metrics; save it.

    CACHE is a cache file; without it, the cache of --pipeline (default settings if none) is used.
    """
    from ..heads.registry import check_head, parse_params

    if update:
        from .update import fit_update

        return fit_update(update, cache, pipeline, out, force, params=params, templates=templates, limit=limit,
                          retune=retune)
    if retune:
        raise FeatxUsageError("--retune is for --update")

    if len(_head_names([head_name])) != 1:
        raise FeatxUsageError(f"featx fit trains one head, got {head_name!r}; `featx grid --heads` searches several")
    check_head(head_name)
    user_params = parse_params(params)
    from ..heads.streaming import budget, train_bytes

    budget_bytes = budget(memory_budget)  # a bad size is refused before the cache is read
    exp = _experiment_with_cache(cache, pipeline, limit)
    overrides = {**exp.heads.get(head_name, {}), **user_params}
    from ..heads.persist import card_path
    from ..heads.registry import HEADS, make_head
    from ..probe.fitting import fit_head

    head = make_head(head_name, overrides)  # bad parameters are refused here, before the cache is read
    path = resolve_cache(cache, exp)
    if out:  # the head and its card: never the cache (nor its companions), never another kind of file
        inputs = {"the cache": path, "the templates": templates, "the audit": audit_file}
        check_output(out, inputs, replaces=("zip",), force=force)
        check_output(card_path(out), inputs, replaces=("text",), force=force)
    from ..cache.store import open_features
    from ..heads.layers import layer_columns, with_layers

    fs = open_features(path)  # opened (and its layout checked) once
    if fs.multilabel:  # several labels per image: its own fit (one-vs-rest, mAP, thresholds on val)
        from .multilabel import fit_multilabel_cmd

        return fit_multilabel_cmd(fs, head_name, overrides, out, tune, [o for o, on in (
            ("--layers", layers != "all"), ("--templates", templates), ("--audit/--exclude-leaked",
             audit_file or exclude_leaked)) if on])
    columns, chosen_layers = layer_columns(fs.meta, layers)
    tuning, card = None, None
    streamed = "train" in fs and train_bytes(fs["train"]) > budget_bytes
    if streamed and tune and not HEADS[head_name].needs_text:
        echo("featx: note: the train split exceeds the memory budget: fitted streaming with the head's "
             "default or given parameters (tuning needs the split in memory)", err=True)
        tune = False
    if HEADS[head_name].needs_text:  # built from the text tower, not trained: nothing to tune, no baselines
        from .zeroshot import zeroshot_head

        head, card = zeroshot_head(fs, overrides, templates)
        tune = baselines = False
    elif templates:
        raise FeatxUsageError("--templates is for --head zeroshot")
    if tune:
        from ..probe.search import tune_head

        tuning = tune_head(head_name, fs, fixed=overrides, columns=columns)
        if tuning:
            overrides = {**overrides, tuning["param"]: tuning["chosen"]}
            head = make_head(head_name, overrides)
            echo(f"tuned {tuning['param']} on {tuning['selection']}: {tuning['chosen']:g} of {len(tuning['values'])} "
                 f"values ({tuning['selection']} {tuning['metric']} {tuning['score']:.4f}; {tuning['seconds']:.1f} s)")
            from ..probe.selection import edge_notes

            for note in edge_notes(head_name, {tuning["param"]: tuning["values"]}, {tuning["param"]: tuning["chosen"]},
                                   fit=True):
                echo(f"featx: note: {note}", err=True)
    if columns is not None:
        echo(f"layers: {', '.join(chosen_layers)} ({len(columns)} of the cache's columns)")
    leaked, leak_card = leaked_for(path, fs.cache_key, audit_file, exclude_leaked)
    card = {**(card or {}), **({"leakage": leak_card} if leak_card else {})} or None
    result = fit_head(head_name, with_layers(head, columns), path, out=out, tuning=tuning, views=views, card=card,
                      memory_budget=None if HEADS[head_name].needs_text else budget_bytes, leaked=leaked)
    shown = {k: v for k, v in result.params.items() if k in HEADS[head_name].key_params}
    echo(f"{head_name}: fit {result.fit_seconds:.1f} s on {result.n_train} x {result.n_features} "
               f"({result.n_classes} classes); {', '.join(f'{k}={v!r}' for k, v in shown.items())}")
    echo(f"{'split':<6} {'n':>6} " + " ".join(f"{m:>14}" for m in METRICS))
    for split, m in result.metrics.items():
        if m and not split.endswith("_without_leaked"):
            echo(f"{split:<6} {m['n']:>6} " + " ".join(f"{m[k]:>14.4f}" for k in METRICS))
    echo_leaks(result.metrics, leak_card)
    cal = result.calibration
    if cal and "temperature" in cal:
        ece = (f"; test ECE {cal['test_ece']:.4f} [{cal['test_ece_ci'][0]:.4f}, {cal['test_ece_ci'][1]:.4f}] -> "
               f"{cal['test_ece_calibrated']:.4f} [{cal['test_ece_calibrated_ci'][0]:.4f}, "
               f"{cal['test_ece_calibrated_ci'][1]:.4f}]" if "test_ece" in cal else "")
        echo(f"calibration: temperature {cal['temperature']:.4g} fitted on {cal['val_rows']} val rows "
             f"({cal['val_errors']} errors){ece} (featx predict applies it)")
    elif cal:
        echo(f"calibration: skipped, {cal['skipped']}; featx predict prints the head's raw scores")
    echo(f"saved {result.head_path} and {result.card_path}")
    if baselines:
        fit_baselines(head_name, overrides, path, exp if pipeline else None, result.card_path)


def _grid_overrides(specs, heads) -> dict:
    """``["logreg.C=0.1,1,10", "n_neighbors=10,20"]`` -> ``{head: {param: [values]}}``."""
    from ..heads.registry import parse_params

    out: dict[str, dict] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        head, dot, param = name.rpartition(".") if "." in name.split("__")[0] else ("", "", name)
        targets = [head] if dot else list(heads)
        if dot and head not in heads:
            raise FeatxUsageError(f"--grid {spec}: head {head!r} is not among the searched heads ({', '.join(heads)})")
        if not sep or not param:
            raise FeatxUsageError(f"--grid {spec!r} is not [HEAD.]NAME=V1,V2,...")
        parsed = [parse_params([f"v={v}"])["v"] for v in values.split(",") if v.strip()]
        for h in targets:
            out.setdefault(h, {})[param] = parsed
    return out


def _jobs(jobs: int) -> int:
    """joblib's ``n_jobs``: a positive count, or -1 / -2 ... for all cores / all but one; 0 means nothing."""
    if jobs == 0:
        raise click.BadParameter("0 runs nothing: give a number of parallel fits, or -1 for all cores")
    return jobs


def _shots(shots: str | None) -> list[int]:
    if not shots:
        return []
    try:
        shot_list = [int(k) for k in shots.split(",") if k.strip()]
    except ValueError:
        raise FeatxUsageError(f"--shots {shots!r} is not a list of integers") from None
    if not shot_list or min(shot_list) < 1:
        raise FeatxUsageError(f"--shots {shots!r}: give positive integers, e.g. 1,2,4,8,16")
    return shot_list


@click.command()
@click.argument("cache", required=False, type=click.Path(dir_okay=False))
@pipeline_option
@click.option("--heads", "--head", "-H", "head_names", multiple=True,
              help="Heads to search, separated by spaces or commas, or repeated (default: every head).")
@click.option("--grid", "grid_specs", multiple=True, metavar="[HEAD.]NAME=V1,V2",
              help="Replace one parameter's grid, e.g. logreg.C=0.01,0.1,1 (repeatable; wins over the pipeline's [grid.HEAD]).")
@click.option("--metric", type=click.Choice(list(METRICS)), default="top1",
              show_default=True, help="Score that selects the best grid point on the validation split.")
@click.option("--jobs", "-j", type=int, default=-1, show_default=True, callback=lambda ctx, p, v: _jobs(v),
              help="Parallel fits (joblib n_jobs; -1 = all cores).")
@click.option("--folds", type=click.IntRange(min=2), default=CV_FOLDS, show_default=True,
              help="k of the stratified k-fold CV used when the cache has no validation split.")
@click.option("--class-weight", type=click.Choice(list(CLASS_WEIGHTS)), default=None,
              help="Weight classes inversely to their frequency in every head that supports it.")
@click.option("--shots", default=None, metavar="K1,K2,...",
              help="Also draw few-shot curves: test top-1 when training the best point on K images per class.")
@click.option("--tries", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random draws per few-shot K (mean and std are reported).")
@out_option("Report folder (default reports/<pipeline name or cache name>).", file=False)
@click.option("--backend", type=click.Choice(list(GRID_BACKENDS)), default="loky", show_default=True,
              help="joblib backend: " + "; ".join(f"{k}: {v}" for k, v in GRID_BACKENDS.items()) + ".")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler address (tcp://HOST:PORT); without it --backend dask starts a LocalCluster.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also fit the best head on random-init features and raw pixels (same items; a sample of at most "
                   "2,000 train / 2,000 test rows; cached) and give the transfer verdict.")
@click.option("--layers", "layers", default="all", show_default=True,
              help="For a cache of several layers (featx extract --layers stages): all, last or names (every head "
                   "searches those columns), or search: every column, then greedy forward selection of layers for "
                   "the chosen head, reported beside it.")
@setting_option(SourceOptions, "limit")
@memory_budget_option
@leak_options
@click.option("--no-progress", is_flag=True, help="Hide the progress bar (or, in a log file, the progress lines).")
def grid(cache, pipeline, head_names, grid_specs, metric, jobs, folds, class_weight, shots, tries, out, backend,
         scheduler, baselines, layers, memory_budget, exclude_leaked, audit_file, limit,
         no_progress):  # one parameter per option: click's convention
    """Search each head's hyper-parameters on a cache and write report.md, report.html and results.json.

    Protocol: fit on train, select on val (k-fold CV if there is none), refit the best point on
    train+val, evaluate on test once.
    """
    shot_list = _shots(shots)
    from ..heads.registry import HEADS, check_head, trained_heads

    heads = _head_names(head_names) or trained_heads()
    for h in heads:
        check_head(h)
        if HEADS[h].needs_text:
            raise FeatxUsageError(f"grid searches trained heads; {h} has nothing to search: on a clip: cache grid adds "
                                  "it as a baseline row by itself (featx fit --head zeroshot fits it alone)")
    exp = _experiment_with_cache(cache, pipeline, limit)
    from ..probe.search import parse_grid

    overrides = {h: dict(exp.grids.get(h, {})) for h in heads}
    for h, g in _grid_overrides(grid_specs, heads).items():
        overrides[h].update(g)
    for h in heads:
        parse_grid(h, overrides[h])  # every grid checked before any work
    path = resolve_cache(cache, exp)
    from ..cache.store import open_features
    from ..heads.streaming import budget, train_bytes
    from ..probe.grid import GridOptions, run_grid

    fs = open_features(path)  # opened (and its layout checked) once
    if fs.multilabel:
        from .multilabel import grid_multilabel_cmd

        heads = _head_names(head_names) or ["logreg", "svm", "knn"]
        out_dir = check_report_folder(Path(out) if out else Path("reports") / (exp.name if pipeline else path.stem),
                                      REPORT_FILES + ("results.json",), {"the cache": path})
        paths = grid_multilabel_cmd(fs, heads, {h: parse_grid(h, overrides.get(h, {}), feature_dim=fs.feature_dim)
                                                for h in heads}, out_dir)
        return echo("wrote " + ", ".join(str(p) for p in paths))
    need = train_bytes(fs["train"]) if "train" in fs else 0
    if need > budget(memory_budget):
        raise FeatxError(f"the train split ({need / 2**20:.0f} MiB of features) exceeds the memory budget: grid needs "
                         "it in memory; raise --memory-budget, or fit logreg/svm with featx fit, which streams it")

    from ..heads.layers import layer_columns

    columns, _ = layer_columns(fs.meta, None if layers == "search" else layers)  # checked first
    dim = len(columns) if columns else fs.feature_dim  # grids that scale with the features
    grids = {h: parse_grid(h, overrides[h], feature_dim=dim) for h in heads}

    name = exp.name if pipeline else path.stem
    out_dir = check_report_folder(Path(out) if out else Path("reports") / name, REPORT_FILES + ("results.json",),
                                  {"the cache": path})
    with contextlib.ExitStack() as stack:
        if backend == "dask":
            stack.enter_context(_dask(scheduler))
        t0 = time.perf_counter()
        leaked, leak_card = leaked_for(path, fs.cache_key, audit_file, exclude_leaked)
        options = GridOptions(metric=metric, jobs=jobs, folds=folds, class_weight=class_weight,
                              shots=tuple(shot_list), tries=tries, layers=layers,
                              leaked_test=tuple(sorted((leaked or {}).get("test", ()))))
        results, paths = run_grid(path, grids, name=name, out_dir=out_dir, options=options,
                                  baselines=grid_baselines(path, exp if pipeline else None) if baselines else None,
                                  progress=progress_renderer(enabled=not no_progress))
    choice = results["choice"]
    best = next(r for r in results["heads"] if r["head"] == choice["chosen"])
    tied = (f" (tied within one standard error with {', '.join(h for h in choice['tied'] if h != best['head'])}; "
            "the simplest chosen)" if len(choice["tied"]) > 1 else "")
    echo(f"best head {best['head']}{tied}: test top1 {best['test'].get('top1', float('nan')):.4f}; "
         f"{time.perf_counter() - t0:.1f} s in all")
    echo_leaks({"test": best["test"], "test_without_leaked": best.get("test_without_leaked")}, leak_card)
    from .zeroshot import zeroshot_row

    zeroshot_row(path, out_dir)
    echo("wrote " + ", ".join(str(p) for p in paths))


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


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(list(REPORT_FORMATS)), default="md", show_default=True,
              help="Markdown table or CSV.")
@out_option("Write the table here instead of stdout.")
def report(results, fmt, out):
    """Merge results.json files of several grid runs into one table (one row per pipeline and head)."""
    from ..probe.report import merge_results, render_rows
    from ..util import atomic_write

    text = render_rows(merge_results(results), fmt)
    if out:
        with atomic_write(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        echo(f"wrote {out}")
    else:
        echo(text, nl=False)


@click.command()
@setting_option(SourceOptions, "data")
@setting_option(SourceOptions, "root")
@click.option("--backbones", "-b", "backbone_list", required=True, metavar="NAME[:WEIGHTS],...",
              help="Candidates, comma-separated, e.g. mobilenet_v2:IMAGENET1K_V1,efficientnet_lite0,efficientnet_lite2, "
                   "timm:NAME or clip:ARCH/TAG (a clip: candidate also gets a zero-shot score).")
@click.option("--weights", "-w", default=None,
              help="Weights for every candidate that names none inline (default: each model's default weights).")
@click.option("--sample", type=click.IntRange(min=10), default=RANK_SAMPLE, show_default=True,
              help="Labelled train items in the stratified sample every candidate is scored on.")
@setting_option(SourceOptions, "seed")
@click.option("--folds", type=click.IntRange(min=2), default=CV_FOLDS, show_default=True,
              help="k of the cross-validated probe accuracy on the sample.")
@setting_option(ExtractOptions, "cache_dir")
@setting_option(ExtractOptions, "device")
@out_option("Report folder (default reports/rank-<dataset>).", file=False)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar (or, in a log file, the progress lines).")
def rank(data, root, backbone_list, weights, sample, seed, folds, cache_dir, device, out,
         no_progress):  # one parameter per option: click's convention
    """Rank candidate backbones on a sample of a dataset before extracting it in full.

    Each candidate is scored on the same stratified sample by LogME, a cross-validated probe accuracy and a k-NN
    probe, next to two baselines (the first candidate's architecture with random weights, and raw pixels); a
    candidate worse than the better baseline beyond the noise is flagged as negative transfer (within the noise:
    "can't tell"). Writes rank.json, report.md and report.html.
    """
    from ..backbones.registry import check_backbone, parse_backbone

    candidates = [(spec.strip(), weights) if spec.strip().startswith(("timm:", "clip:")) else parse_backbone(spec, weights)
                  for spec in backbone_list.split(",") if spec.strip()]  # a family's name keeps its own colon
    if not candidates:
        raise FeatxUsageError("--backbones: name at least one backbone")
    for name, w in candidates:  # every candidate checked before the first is extracted
        check_backbone(name, w)
    exp = experiment(None, data=data, root=root, seed=seed, cache_dir=cache_dir, device=device)
    from ..pipeline import build_source

    source = build_source(exp)  # a wrong --data fails here, before torch loads
    from .multilabel import single_label_only

    single_label_only(source, "featx rank")
    out_dir = check_report_folder(Path(out) if out else Path("reports") / f"rank-{source.name}",
                                  REPORT_FILES + ("rank.json",), {"the data": exp.source.data})
    from ..transfer.rank import rank_backbones
    from ..transfer.report import write_rank_reports
    from ..extract import check_device

    check_device(exp.extract.device)
    record = rank_backbones(source, candidates, sample=sample, seed=exp.source.seed, folds=folds,
                            cache_dir=exp.extract.cache_dir, device=exp.extract.device,
                            progress=progress_renderer(enabled=not no_progress))
    paths = write_rank_reports(out_dir, record)
    from ..probe.verdict import verdict_line

    b = record["baselines"]
    for i, r in enumerate(record["candidates"], 1):
        echo(f"{i}. {r['backbone']} {r['weights']}: LogME {r['scores']['logme']:.4f}, probe top-1 "
             f"{r['probe_top1']:.4f}, k-NN top-1 {r['scores']['knn_top1']:.4f}"
             f"{f', zero-shot top-1 {z:.4f}' if (z := r.get('zeroshot_top1')) is not None else ''}; "
             f"{verdict_line(r['transfer'])}")
    echo(f"baselines: random-init {b['random_init']:.4f}, raw pixels {b['raw_pixels']:.4f}; "
               f"{record['n_sampled']} items, {record['total_seconds']:.1f} s")
    echo("wrote " + ", ".join(str(p) for p in paths))
