"""One declaration per choice: every setting's allowed values, default, check and help live here.

The command line (``click.Choice`` and help texts), the pipeline-file loader and the library
functions all read these declarations, so adding a decoder or a precision is one entry in
:data:`PRECISIONS` / :data:`DECODERS` plus its implementation:

- :data:`PRECISIONS`, :data:`DECODERS`, :data:`METRICS`: registries of named choices.
- :class:`SourceOptions`, :class:`BackboneOptions`, :class:`ExtractOptions`: frozen dataclasses,
  one per table of a pipeline file (``[source]``, ``[backbone]``, ``[extract]`` + ``[cache]``).
  Each field's metadata holds its pipeline key, help text and check; ``__post_init__`` runs the
  checks, so a value is validated the same way whether it comes from a file, a command-line
  override or a Python call (``dataclasses.replace`` runs them again).

This module imports nothing heavy (no torch, numpy or scikit-learn): the CLI reads it before
deciding whether there is any work to do.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import FeatxUsageError

__all__ = [
    "Precision", "Decoder", "PRECISIONS", "DECODERS", "METRICS", "DEVICE_HELP", "DATASETS_ROOT", "CV_FOLDS", "GRID_BACKENDS",
    "CLASS_WEIGHTS", "REPORT_FORMATS", "INDEXES", "RANK_SAMPLE", "EXPORT_FORMATS",
    "SourceOptions", "BackboneOptions", "ExtractOptions", "setting", "settings_of", "check_device_name",
]


@dataclass(frozen=True)
class Precision:
    """A numeric precision of the backbone's forward pass.

    Attributes:
        name: what users type (``--precision NAME``, ``precision = "NAME"``); recorded in the cache and its key.
        autocast: ``torch`` dtype name run under ``torch.autocast``; ``None`` = plain fp32.
        help: one line for ``--help``.
    """

    name: str
    autocast: str | None
    help: str


@dataclass(frozen=True)
class Decoder:
    """How image files become the input of the weights' own transform.

    Attributes:
        name: what users type (``--decoder NAME``); recorded in the cache and, unless ``pil``, its key.
        function: ``"module:function"`` called as ``function(path, min_side=N)``, where ``N`` is twice the
            transform's resize target; it returns a uint8 ``(C, H, W)`` tensor or a PIL image, to which the
            weights' preset is applied, or ``None`` for a file it leaves to the exact PIL path. ``None`` =
            always the exact path (PIL, as torchvision's ImageFolder loader).
        help: one line for ``--help``.
        on_device: decode and preprocess on the extraction device, a batch at a time
            (:mod:`featx.data.device`); ``function`` is then unused. Applies to in-memory datasets too.
    """

    name: str
    function: str | None
    help: str
    on_device: bool = False


#: name -> precision. fp32 is the default and equals a plain torchvision forward.
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", None, "plain fp32, the default: equals a plain torchvision forward"),
    Precision("bf16", "bfloat16", "bfloat16 autocast: faster where the hardware has bf16 units; recorded, in the key"),
    Precision("fp16", "float16", "float16 autocast (GPUs); recorded, in the key"),
)}

#: name -> decoder. pil is the default (torchvision's ImageFolder loader decodes with PIL).
DECODERS: dict[str, Decoder] = {d.name: d for d in (
    Decoder("pil", None, "PIL, as torchvision's ImageFolder loader (the default)"),
    Decoder("torchvision", "featx.data.decoding:decode_tensor",
            "torchvision.io decoding of JPEG/PNG/WebP files and the weights' transform on uint8 tensors: faster on "
            "small images, features within ~1.5%, recorded and part of the cache key"),
    Decoder("scaled", "featx.data.decoding:decode_scaled",
            "JPEGs decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short side stays >= 2x the resize "
            "target, then the weights' transform: 2.8x faster on 12 MP photos, features within cosine 0.999 of "
            "the exact path; other files go the exact way; recorded and part of the cache key"),
    Decoder("device", None,
            "decode and preprocess on the extraction device in batches (nvJPEG + resize on the GPU with "
            "--device cuda; the same tensor code on the CPU), features within cosine 0.999 of the exact path; "
            "recorded and part of the cache key", on_device=True),
)}

#: metric name -> what it means (also the order of report columns).
METRICS: dict[str, str] = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "mean_per_class": "mean per-class accuracy (balanced accuracy)",
    "macro_f1": "macro-averaged F1",
}

DEVICE_HELP = "cpu, cuda or cuda:N"
#: The most DataLoader worker processes an extraction may start: 4 per core (each decodes; more only thrash).
MAX_WORKERS = 4 * (os.cpu_count() or 1)
#: Folds of the stratified cross-validation used where a cache has no val split (grid, audit, rank, adapt).
CV_FOLDS = 5
#: Labelled train items ``featx rank`` scores every candidate on (a stratified sample).
RANK_SAMPLE = 2000
#: ``featx grid``'s joblib backends: local processes, or Dask (dask.distributed) for a cluster.
GRID_BACKENDS = {"loky": "local processes", "dask": "Dask (dask.distributed): a cluster, or a LocalCluster"}
#: Class weighting every head that supports it can use.
CLASS_WEIGHTS = {"balanced": "classes weighted inversely to their frequency"}
#: Formats of ``featx report``'s merged table.
REPORT_FORMATS = {"md": "a Markdown table", "csv": "CSV"}
#: ``featx export`` formats: format -> what it writes.
EXPORT_FORMATS = {
    "npz": "one file",
    "npy": "a folder of <split>_X/_y/_ids.npy and classes.json",
    "parquet": "one table (needs pyarrow)",
    "lance": "a Lance table, a folder (needs pylance)",
}
#: Nearest-neighbour search backends (``featx audit --index``).
INDEXES = {"exact": "blocked exact cosine search (numpy)", "faiss": "a FAISS inner-product index (exact; faiss-cpu)"}
#: Where torchvision datasets are kept (``--root``, ``[source] root``) unless a pipeline says otherwise.
DATASETS_ROOT = "cache/datasets"
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device_name(value: str, *, allow_auto: bool = False) -> bool:
    """Whether ``value`` names a device featx supports (syntax only; ``featx.extract.run.check_device`` also
    checks that it exists here)."""
    return isinstance(value, str) and (bool(_DEVICE.match(value)) or (allow_auto and value == "auto"))


def _device_verdict(value: str) -> bool | str:
    if check_device_name(value):
        return True
    if value in ("meta", "mps", "xpu", "xla", "hpu", "mtia") or value.split(":")[0] in ("meta", "mps", "xpu"):
        return f"device {value!r} is not supported (use {DEVICE_HELP})"
    return f"unknown device {value!r} (use {DEVICE_HELP})"


#: The least out-of-fold probability of its suggested label at which ``featx audit --relabel`` relabels an item
#: (below it, the item is left out like any other flagged one). A convention, not tuned: at 0.9 the probe is nine
#: times surer of the suggestion than of every other class together.
RELABEL_MIN_CONFIDENCE = 0.9


def setting(default: Any, help: str, *, table: str, key: str | None = None,
            choices: Callable[[], dict] | None = None, check: Callable[[Any], bool] | None = None,
            what: str = "", kind: type | tuple = (), optional: bool = False, cli: str | None = None):
    """A dataclass field that declares one setting (one keyword per attribute of the declaration, like
    ``dataclasses.field`` itself: a declaration reads best with every attribute named).

    Args:
        default: its default (the only place it is written).
        help: the ``--help`` text (also used in pipeline-file errors).
        table, key: where it lives in a pipeline file (``key`` defaults to the field name).
        choices: a function returning the registry of allowed names (read when used, so a
            registered addition shows everywhere).
        check: a predicate for values that are not a choice from a registry.
        what: what a valid value is, for the error message of ``check``.
        kind: accepted Python type(s) (``float`` also takes ``int``; ``bool`` is never an ``int``).
        optional: whether ``None`` is allowed.
        cli: the command-line flag when it is not ``--<field-name>``.
    """
    return field(default=default, metadata={
        "help": help, "table": table, "key": key, "choices": choices, "check": check, "what": what,
        "kind": kind, "optional": optional, "cli": cli,
    })


def settings_of(cls) -> dict[str, dataclasses.Field]:
    """Field name -> field, for the settings of one options dataclass."""
    return {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}


def _check_value(f: dataclasses.Field, value, where: str):
    m = f.metadata
    if value is None:
        if m["optional"]:
            return None
        raise FeatxUsageError(f"{where}: a value is required")
    kind = m["kind"] if isinstance(m["kind"], tuple) else (m["kind"],)
    if kind:
        ok = (*kind, int) if float in kind else kind
        if (isinstance(value, bool) and bool not in kind) or not isinstance(value, ok):
            names = " or ".join("path" if k is os.PathLike else k.__name__ for k in kind)
            raise FeatxUsageError(f"{where}: expected a {names}, got {value!r}")
    if m["choices"] is not None:
        registry = m["choices"]()
        if value not in registry:
            raise FeatxUsageError(f"{where}: unknown {m['what']} {value!r} (choose from {', '.join(registry)})")
    elif m["check"] is not None:
        verdict = m["check"](value)
        if isinstance(verdict, str):  # the check's own words
            raise FeatxUsageError(f"{where}: {verdict}")
        if not verdict:
            raise FeatxUsageError(f"{where}: expected {m['what']}, got {value!r}")
    return value


class _Options:
    """Validation shared by the options dataclasses."""

    def __post_init__(self):
        for name, f in settings_of(type(self)).items():
            _check_value(f, getattr(self, name), self.where(name))

    @classmethod
    def where(cls, name: str) -> str:
        """How an error names a setting given in Python: ``batch size``."""
        return name.replace("_", " ")

    @classmethod
    def validated(cls, name: str, value, where: str):
        """``value`` checked as setting ``name`` (for a pipeline file or a flag, named by ``where``)."""
        return _check_value(settings_of(cls)[name], value, where)


def _fraction(v) -> bool:
    return 0 <= v < 1


@dataclass(frozen=True)
class SourceOptions(_Options):
    """``[source]``: where the images come from and how they are split."""

    data: str = setting("torchvision:FashionMNIST", (
        "Source: torchvision:<Name> (e.g. torchvision:FashionMNIST), an image folder (root/<class>/* or "
        "root/{train,val,test}/<class>/*), a .csv manifest (path,label[,split]), a Stanford Dogs root "
        "(Images/ + lists/), or WebDataset tar shards (a .tar, a folder of them, or shards-{000..009}.tar; "
        "KEY.jpg + KEY.cls or KEY.json); the detected layout is reported."), table="source", kind=str,
        check=lambda v: bool(v.strip()), what="a non-empty source")
    root: str = setting(DATASETS_ROOT, "Where torchvision datasets are stored or downloaded (default cache/datasets).",
                        table="source", kind=(str, os.PathLike))
    download: bool = setting(False, "Let torchvision download a built-in dataset if it is missing (default: no).",
                             table="source", kind=bool, cli="--download/--no-download")
    val_fraction: float = setting(0.1, "Fraction carved out as a stratified validation split when the data has none "
                                  "(default 0.1).", table="source", kind=float, check=_fraction, what="a fraction in [0, 1)")
    test_fraction: float = setting(0.1, "Fraction carved out as a stratified test split when the data has none "
                                   "(default 0.1).", table="source", kind=float, check=_fraction,
                                   what="a fraction in [0, 1)")
    seed: int = setting(0, "Seed of the validation/test split (default 0).", table="source", kind=int)
    limit: int = setting(0, "Use at most N items of each split, a stratified seeded sample (a quick trial; 0 = all, the default).",
                         table="source", kind=int, check=lambda v: v >= 0,
                         what="0 (all) or a positive number of items")


@dataclass(frozen=True)
class BackboneOptions(_Options):
    """``[backbone]``: which frozen network makes the embeddings."""

    name: str = setting("mobilenet_v2", (
        "torchvision model name, optionally name:WEIGHTS (default mobilenet_v2); efficientnet_lite0/1/2 (embedded); "
        "timm:<name> (weights from the local Hugging Face cache); or clip:ARCH[/TAG] (OpenCLIP, e.g. "
        "clip:ViT-B-32/laion2b_s34b_b79k)."), table="backbone", kind=str,
        check=lambda v: bool(v.strip()), what="a model name", cli="--backbone")
    weights: str | None = setting("IMAGENET1K_V1", (
        "Weights enum member (IMAGENET1K_V1), DEFAULT, none for random init, or a local .pth state dict "
        "(loaded with weights_only=True, preprocessed as the default weights)."), table="backbone", kind=str,
        optional=True)
    layer: str | None = setting(None, (
        "Take the embedding from this intermediate node (torchvision feature_extraction name, e.g. features.14), "
        "global-average-pooled, instead of the penultimate layer; several modules A,B,... pooled and concatenated; "
        "or stages: the end of every stage of the model's trunk (and the penultimate layer), one forward pass "
        "(recorded in the cache as layer_parts; part of the key)."), table="backbone", kind=str, optional=True)
    weights_file: str | None = setting(None, (
        "Local weights for any family, offline: a torchvision or timm state dict / checkpoint (.pth, .pt, .bin, "
        ".ckpt; loaded with weights_only=True), a .safetensors file, or an OpenCLIP folder (open_clip_config.json "
        "+ weights); its sha256 is recorded. Wins over --weights."), table="backbone", kind=(str, os.PathLike),
        optional=True)
    pooling: str | None = setting(None, (
        "For ViTs (timm: and clip: families): cls (the class token), mean (of the patch tokens) or cls+mean "
        "(both concatenated, as DINOv2's linear evaluation); default: the model's own pooling. Recorded and part "
        "of the cache key."), table="backbone", kind=str, optional=True,
        check=lambda v: v in ("cls", "mean", "cls+mean"), what="cls, mean or cls+mean")


@dataclass(frozen=True)
class ExtractOptions(_Options):
    """``[extract]`` and ``[cache]``: how the extraction runs and where it writes."""

    batch_size: int = setting(16, "Images per forward pass (default 16, fastest for small CNNs on 2 CPU cores).",
                              table="extract", kind=int, check=lambda v: v >= 1, what="a positive number of images")
    workers: int = setting(-1, f"DataLoader worker processes decoding images; -1 = automatic (default); at most "
                           f"{MAX_WORKERS} (4 per core here).", table="extract", kind=int,
                           check=lambda v: -1 <= v <= MAX_WORKERS,
                           what=f"-1 (automatic), 0 or a number of worker processes up to {MAX_WORKERS}")
    device: str = setting("cpu", f"{DEVICE_HELP} (default cpu).", table="extract", kind=str,
                          check=_device_verdict, what=DEVICE_HELP)
    precision: str = setting("fp32", "Numeric precision of the forward pass (default fp32: equals a plain torchvision "
                             "forward; the others are recorded and part of the cache key).", table="extract", kind=str,
                             choices=lambda: PRECISIONS, what="precision")
    decoder: str = setting("pil", "Image decoder (default pil, exact: as torchvision's ImageFolder loader; scaled: "
                           "camera-sized JPEGs decoded at a reduced DCT scale, 2.8x faster on 12 MP photos, features "
                           "within cosine 0.999; device: decoded and preprocessed on the GPU in batches; "
                           "torchvision: torchvision.io decoding, features within ~1.5%). "
                           "Non-default decoders are recorded and part of the cache key.", table="extract", kind=str,
                           choices=lambda: DECODERS, what="decoder")
    compile: bool = setting(False, "Run the backbone through torch.compile (default off): ~30 s of compiling first, "
                            "then a faster forward (1.9x for MobileNetV2 on 2 CPU cores); same features within fp32 "
                            "rounding, recorded.", table="extract", kind=bool, cli="--compile/--no-compile")
    channels_last: bool = setting(True, "Run the backbone in channels_last memory format (default on; same features "
                                  "within fp32 rounding).", table="extract", kind=bool,
                                  cli="--channels-last/--no-channels-last")
    strict: bool = setting(False, "Fail on the first unreadable image instead of recording it as skipped "
                           "(see `featx info`).", table="extract", kind=bool)
    reuse: str = setting("auto", "Copy the rows of unchanged items (same file or id, and same fingerprint) from "
                         "other caches of the same backbone and settings instead of embedding them again: auto "
                         "(default: the complete caches in --out's folder and in the cache folder, this dataset's "
                         "first), a cache file, or none.",
                         table="extract", kind=(str, os.PathLike))
    fingerprint: str = setting("stat", "What tells row reuse that an image is unchanged: stat (default: file size "
                               "and modification time, one stat per file) or content (a SHA-256 of its bytes: reads "
                               "every file once more, and matches a copied folder, whose modification times are "
                               "new). Recorded per row; not part of the cache key.", table="extract", kind=str,
                               choices=lambda: ("stat", "content"), what="fingerprint")
    views: int = setting(0, "Also extract K augmented views of every train image (a seeded random resized crop and "
                         "flip each, then the backbone's transform) into caches of their own beside this one "
                         "(<cache>.view<k>.h5); featx fit trains on them too (default 0: none).", table="extract",
                         kind=int, check=lambda v: 0 <= v <= 32, what="0 to 32 views")
    cache_dir: str = setting("cache", "Folder of caches (default cache).", table="cache", key="dir",
                             kind=(str, os.PathLike))
