"""Named experiments: ``pipelines/<name>.toml`` -> an :class:`Experiment`.

A pipeline file has these tables (every key optional; defaults shown)::

    [source]
    data = "torchvision:FashionMNIST"   # or a folder, a .csv manifest, a Stanford Dogs root
    root = "cache/datasets"             # where torchvision datasets are stored
    download = false                    # let torchvision download the dataset (online)
    val_fraction = 0.1                  # stratified validation split carved from train
    test_fraction = 0.1                 # only for folders without a test split
    seed = 0
    limit = 0                           # at most N items of each split, a stratified seeded sample (0 = all)

    [backbone]
    name = "mobilenet_v2"
    weights = "IMAGENET1K_V1"           # torchvision weights enum member, DEFAULT, none, or a .pth file
    layer = "features.14"               # optional: an intermediate node, global-average-pooled

    [extract]
    batch_size = 16
    workers = -1                        # DataLoader workers; -1 = automatic
    device = "cpu"                      # cpu, cuda, cuda:1, ...
    precision = "fp32"                  # fp32 (default, exact), bf16, fp16
    channels_last = true
    decoder = "pil"                     # pil (default, exact), scaled (camera JPEGs) or torchvision (recorded)
    compile = false                     # torch.compile the backbone (~30 s first; faster forward; recorded)

    [cache]
    dir = "cache"

    [heads.svm]                         # parameter overrides per head
    C = 0.01

    [grid.logreg]                       # search grids per head (featx grid), replacing the defaults
    C = [0.001, 0.01, 0.1]

Unknown tables, keys, and values of the wrong type are refused with one clear line. The keys, their
defaults and checks are declared once, in :mod:`featx.options`; command-line overrides
(:meth:`Experiment.override`) go through the same checks.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FeatxUsageError
from .options import BackboneOptions, ExtractOptions, SourceOptions, settings_of
from .util import existing_file

__all__ = ["Experiment", "load_pipeline", "SECTIONS", "experiment", "build_source", "build_backbone",
           "check_cache_exists", "resolve_cache"]

#: options dataclass -> attribute of :class:`Experiment`
_GROUPS = {"source": SourceOptions, "backbone": BackboneOptions, "extract": ExtractOptions}


def _sections() -> dict[str, dict[str, tuple[str, str]]]:
    """table -> {key in the file: (group attribute of Experiment, field name)}, read off the declarations."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for group, cls in _GROUPS.items():
        for name, f in settings_of(cls).items():
            out.setdefault(f.metadata["table"], {})[f.metadata["key"] or name] = (group, name)
    return out


#: table -> {key: (group, field)}: [source], [backbone], [extract], [cache]
SECTIONS = _sections()


@dataclass(frozen=True)
class Experiment:
    """A named experiment: the settings of every stage, and per-head parameters and grids."""

    name: str = "adhoc"
    source: SourceOptions = field(default_factory=SourceOptions)
    backbone: BackboneOptions = field(default_factory=BackboneOptions)
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    #: [heads.<name>] parameter overrides
    heads: dict = field(default_factory=dict)
    #: [grid.<name>] search grids
    grids: dict = field(default_factory=dict)

    def override(self, **values) -> "Experiment":
        """A copy with the given settings (field names of any group; ``None`` = keep) changed,
        each checked as a pipeline file's value would be (named by its command-line flag)."""
        changes: dict[str, dict] = {}
        for name, value in values.items():
            if value is None:
                continue
            group = next((g for g, cls in _GROUPS.items() if name in settings_of(cls)), None)
            if group is None:
                raise TypeError(f"no setting {name!r}")
            cls = _GROUPS[group]
            flag = settings_of(cls)[name].metadata["cli"] or f"--{name.replace('_', '-')}"
            changes.setdefault(group, {})[name] = cls.validated(name, value, flag.split("/")[0])
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **c) for g, c in changes.items()})


def load_pipeline(path: str | Path) -> Experiment:
    """Read and validate a pipeline file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeatxUsageError(f"pipeline file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeatxUsageError(f"pipeline file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise FeatxUsageError(f"pipeline file {path} cannot be read: {exc.strerror or exc}") from None
    groups: dict[str, dict] = {g: {} for g in _GROUPS}
    heads, grids = {}, {}
    for table, body in doc.items():
        if table in ("heads", "grid"):
            if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
                raise FeatxUsageError(f"{path}: [{table}] must hold one table per head, e.g. [{table}.svm]")
            from .heads.registry import check_head

            for head in body:
                check_head(head, where=f"{path}: [{table}.{head}]")
            if table == "heads":
                heads = body
            else:
                grids = {h: {k: v if isinstance(v, list) else [v] for k, v in g.items()} for h, g in body.items()}
            continue
        if table not in SECTIONS:
            raise FeatxUsageError(f"{path}: unknown table [{table}] (known: {', '.join([*SECTIONS, 'heads', 'grid'])})")
        if not isinstance(body, dict):
            raise FeatxUsageError(f"{path}: {table} must be a table")
        for key, value in body.items():
            if key not in SECTIONS[table]:
                raise FeatxUsageError(f"{path}: [{table}] has no key {key!r} (known: {', '.join(SECTIONS[table])})")
            group, name = SECTIONS[table][key]
            groups[group][name] = _GROUPS[group].validated(name, value, f"{path}: [{table}] {key}")
    return Experiment(name=path.stem, heads=heads, grids=grids,
                      **{g: cls(**groups[g]) for g, cls in _GROUPS.items()})


# -- an experiment's objects: what the commands build from it (each imports its stage only when called) --------

def experiment(pipeline: str | None, **overrides):
    """The pipeline file's experiment (or the defaults) with command-line overrides, all validated alike."""
    exp = load_pipeline(pipeline) if pipeline else Experiment()
    return exp.override(**overrides)


def build_source(exp, *, allow_outside: bool = False):
    from .data.layout import make_source

    s = exp.source
    return make_source(s.data, root=s.root, download=s.download, val_fraction=s.val_fraction,
                       test_fraction=s.test_fraction, seed=s.seed, limit=s.limit, allow_outside=allow_outside)


def build_backbone(exp, *, device: str = "cpu"):
    from .backbones.registry import load_backbone

    return load_backbone(exp.backbone.name, exp.backbone.weights_file or exp.backbone.weights, device=device,
                         layer=exp.backbone.layer, pooling=exp.backbone.pooling)


def check_cache_exists(cache: str | None, exp) -> None:
    """Fail fast, before any heavy import: the named cache file exists, or the pipeline's cache folder
    holds at least one cache of its backbone (nothing is unpacked, built or downloaded to find out)."""
    if cache:
        existing_file(cache, "cache file", "; run `featx extract` first, or name an existing .h5")
        return
    folder = Path(exp.extract.cache_dir)
    from .cache.spec import file_stem

    family = exp.backbone.name.startswith(("timm:", "clip:"))
    name = file_stem(exp.backbone.name if family else exp.backbone.name.partition(":")[0])
    if not any(folder.glob(f"*/{name}-*.h5")):
        raise FeatxUsageError(f"no {name} cache under {folder}/ for this pipeline yet; run `featx extract` "
                              "(make features) first, or name a cache file")


def resolve_cache(cache: str | None, exp) -> Path:
    """The cache file named on the command line, or the one of the pipeline's settings (its key
    computed from the source and backbone, as `featx extract` does)."""
    check_cache_exists(cache, exp)
    if cache:
        return Path(cache)
    from .cache.spec import cache_path
    from .data.sources import FileSource
    from .extract import cache_key

    folder = Path(exp.extract.cache_dir)
    source, bb = build_source(exp), build_backbone(exp)
    if not isinstance(source, FileSource):  # a dataset held in memory: its record names its items
        found = _recorded_cache(folder / source.name, source, bb, exp)
        if found is None:  # said without loading (or unpacking) the dataset: a failing command writes nothing
            raise FeatxUsageError(f"no cache for these settings yet under {folder / source.name}"
                                  f"{_nearest_cache(folder / source.name, source, bb, exp)}")
        return found
    source.splits()
    path = cache_path(folder, source.name, bb.name, cache_key(source, bb, exp.extract.precision, exp.extract.decoder))
    if not path.exists():
        raise FeatxUsageError(f"no cache for these settings yet ({path}){_nearest_cache(path.parent, source, bb, exp)}")
    return path


def _recorded_cache(folder: Path, source, bb, exp) -> Path | None:
    """The complete cache in ``folder`` of an in-memory dataset's settings: the same recorded source and the same
    features (:class:`~featx.cache.spec.EmbeddingSpec`). Its items never change, so this is the cache whose key the
    settings give, found without loading the dataset."""
    from .cache.reuse import find_donors
    from .cache.spec import EmbeddingSpec

    want = EmbeddingSpec.of(bb, precision=exp.extract.precision, decoder=exp.extract.decoder, has_files=False)
    found = find_donors(folder, want, source=source.describe())
    return found[0] if found else None


def _nearest_cache(folder: Path, source, bb, exp) -> str:
    """What to do when the settings' cache is missing: name a complete cache of the same backbone and weights
    in ``folder`` and the settings that differ (as options to pass), or say to run `featx extract`."""
    from .cache.store import open_features

    want = source.describe()
    best = None
    from .cache.spec import file_stem

    for other in sorted(folder.glob(f"{file_stem(bb.name)}-*.h5")):
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
