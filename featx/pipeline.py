"""Named experiments: ``pipelines/<name>.toml`` -> an :class:`Experiment`.

A pipeline file has these tables (every key optional; defaults shown)::

    [source]
    data = "torchvision:FashionMNIST"   # or a folder, a .csv manifest, a Stanford Dogs root
    root = "cache/datasets"             # where torchvision datasets are stored
    download = false                    # let torchvision download the dataset (online)
    val_fraction = 0.1                  # stratified validation split carved from train
    test_fraction = 0.1                 # only for folders without a test split
    seed = 0
    limit = 0                           # first N items of each split only (0 = all)

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

__all__ = ["Experiment", "load_pipeline", "SECTIONS"]

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
