"""Backbones: a name -> a frozen network that returns embeddings, its transform and its record.

The registry in front of the backbone families: torchvision classification models
(:mod:`featx.backbones.torchvision_models`, every model through torchvision's weights API) and timm
models (:mod:`featx.backbones.timm_models`: the embedded EfficientNet-Lite0/1/2 and ``timm:<name>``).
Both families share :mod:`featx.backbones.loading` and return a
:class:`~featx.backbones.loading.LoadedModel`; :func:`load_backbone` freezes it, optionally cuts it
at an intermediate layer, and wraps it as a :class:`Backbone`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..data.decoding import RGBTransform, preprocess_record
from ..errors import FeatxError, FeatxUsageError
from ..util import did_you_mean
from . import torchvision_models
from .names import EXTRA_BACKBONES, is_file_spec, parse_backbone, quick_check

__all__ = ["EXTRA_BACKBONES", "Backbone", "BackboneInfo", "FamilyRow", "check_backbone", "family_name", "family_rows", "recorded_weights", "load_backbone", "list_backbones", "parse_backbone"]

@dataclass
class Backbone:
    """A frozen feature extractor and everything needed to reproduce its inputs.

    Attributes:
        name: torchvision model name.
        weights: weights enum name (``IMAGENET1K_V1``) or ``"none"`` for random init.
        model: the module in eval mode; ``model(x)`` returns ``(N, feature_dim)`` embeddings.
        transform: PIL image -> normalised ``(3, H, W)`` float tensor (the weights' own).
        preprocess: the transform as one JSON-able record (timm ``PretrainedCfg`` style).
        feature_dim: embedding size.
        weights_sha256: sha256 of the weight file, ``None`` for random init.
        meta: the weights' metadata (ImageNet accuracy, parameter count, ...).
        layer: the intermediate node the embedding comes from, ``None`` = penultimate.
        pooling: how a ViT's tokens were pooled (``cls``, ``mean``, ``cls+mean``); ``None`` = the model's own.
    """

    name: str
    weights: str
    model: nn.Module
    transform: Callable
    preprocess: dict
    feature_dim: int
    weights_sha256: str | None
    meta: dict = field(default_factory=dict)
    layer: str | None = None
    pooling: str | None = None


@dataclass(frozen=True)
class BackboneInfo:
    """One row of ``featx backbones``: a model with one of its weights."""

    name: str
    weights: str
    is_default: bool
    feature_dim: int
    params: int | None
    top1: float | None
    offline: bool


class _PooledLayer(nn.Module):
    """Output of one intermediate node, global-average-pooled (over H, W; or over tokens)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.body = create_feature_extractor(model, return_nodes={layer: "out"})

    def forward(self, x):
        return _pool(self.body(x)["out"])


#: ``--layer stages``: the pooled output at the end of every stage of the model's trunk, concatenated.
STAGES = "stages"


def _pool(y: torch.Tensor) -> torch.Tensor:
    if y.ndim == 4:
        return y.mean(dim=(2, 3))
    if y.ndim == 3:
        return y.mean(dim=1)
    return y.flatten(1)


class _PooledLayers(nn.Module):
    """Several modules' outputs, each global-average-pooled, concatenated in order (and, with ``with_output``, the
    model's own penultimate embedding last): one forward pass for every layer (Head2Toe, Evci et al. 2022)."""

    def __init__(self, model: nn.Module, names: list[str], with_output: bool):
        super().__init__()
        self.model, self.names, self.with_output = model, list(names), with_output
        modules = dict(model.named_modules())
        self._outputs: dict[str, torch.Tensor] = {}
        for name in self.names:
            modules[name].register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(_module, _inputs, output):
            self._outputs[name] = output
        return hook

    def pooled_parts(self, x) -> list[torch.Tensor]:
        """Each layer's pooled output for the batch ``x`` (and the model's own output last, with ``with_output``)."""
        self._outputs.clear()
        out = self.model(x)
        parts = [_pool(self._outputs[n]) for n in self.names] + ([out.flatten(1)] if self.with_output else [])
        self._outputs.clear()
        return parts

    def forward(self, x):
        return torch.cat(self.pooled_parts(x), dim=1)


def trunk_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks a model's stages are made of: its top-level ``nn.Sequential`` children when there are three or
    more (ResNet's layer1..4), else the children of its largest one (MobileNet's and EfficientNet's ``features`` /
    ``blocks``)."""
    seqs = [(n, m) for n, m in model.named_children() if isinstance(m, nn.Sequential)]
    if len(seqs) >= 3 or not seqs:
        return seqs
    name, seq = max(seqs, key=lambda nm: len(nm[1]))
    return [(f"{name}.{child}", m) for child, m in seq.named_children()]


def stage_ends(model: nn.Module, crop: int) -> list[str]:
    """The module names that end each stage of ``model``'s trunk: the last block of every run of blocks whose
    output has the same shape (channels and resolution), found with one forward pass of a blank image."""
    blocks = trunk_blocks(model)
    shapes: dict[str, tuple] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
               for n, m in blocks]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, crop, crop))
    finally:
        for h in handles:
            h.remove()
    ran = [n for n, _ in blocks if n in shapes and len(shapes[n]) in (2, 3, 4)]
    return [n for i, n in enumerate(ran) if i + 1 == len(ran) or shapes[ran[i + 1]] != shapes[n]]


def _at_layers(model: nn.Module, layer: str, preset, feature_dim: int) -> tuple[nn.Module, int, list]:
    """``--layer stages`` or ``--layer A,B,...``: the pooled outputs of several modules in one pass; the parts
    (name, width) in order."""
    crop = int(preset.crop_size[0])
    modules = {name for name, _ in model.named_modules() if name}
    if layer == STAGES:
        names = stage_ends(model, crop)
        if not names:
            raise FeatxUsageError("--layer stages: featx finds no stages in this model (no sequential trunk); name "
                                  "its modules instead, e.g. --layer a,b,c")
    else:
        names = [n.strip() for n in layer.split(",") if n.strip()]
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise FeatxUsageError(f"layer {unknown[0]!r} is not a module of this model; "
                                  f"{did_you_mean(unknown[0], sorted(modules), cutoff=0.4)}")
    pooled = _PooledLayers(model, names, with_output=False).eval()
    with torch.inference_mode():
        widths = [int(p.shape[1]) for p in pooled.pooled_parts(torch.zeros(1, 3, crop, crop))]
    with_output = layer == STAGES and widths[-1] != feature_dim  # the penultimate is past the trunk (EfficientNet)
    pooled.with_output = with_output
    parts = list(zip(names, widths)) + ([("penultimate", feature_dim)] if with_output else [])
    return pooled, sum(w for _, w in parts), parts


def _at_layer(model: nn.Module, layer: str, preset) -> tuple[nn.Module, int]:
    from torchvision.models.feature_extraction import get_graph_node_names

    nodes = get_graph_node_names(model)[1]
    modules = {name for name, _ in model.named_modules() if name}
    if layer not in nodes and layer not in modules:  # a module name means that module's output
        raise FeatxUsageError(
            f"layer {layer!r} is not a module or node of this model; {did_you_mean(layer, sorted(modules), cutoff=0.4)}"
            f"it has {len(nodes)}, e.g. {', '.join(nodes[-6:])}"
        )
    pooled = _PooledLayer(model, layer).eval()
    crop = int(preset.crop_size[0])
    with torch.inference_mode():
        dim = pooled(torch.zeros(1, 3, crop, crop)).shape[1]
    return pooled, int(dim)


def family_name(spec: str) -> str:
    """A backbone name as typed, or as a cache records it (``timm-NAME``, ``clip-ARCH/TAG``), in its typed form."""
    for recorded, typed in (("timm-", "timm:"), ("clip-", "clip:")):
        if spec.startswith(recorded):
            return typed + spec[len(recorded):]
    return spec


def recorded_weights(meta: dict) -> str | None:
    """The ``weights`` argument that rebuilds a recorded backbone: the weights' name, or for local weights
    (``file:NAME``) the file or folder the cache recorded, when it is still there (its sha256 is checked after)."""
    weights = meta.get("weights")
    if not str(weights or "").startswith("file:"):
        return weights
    path = meta.get("weights_file")
    if not path or not os.path.exists(path):
        raise FeatxError(f"the embeddings were made with local weights {str(weights)[5:]!r}"
                         f"{f' from {path}' if path else ''}, not found here; put the file back where it was")
    return str(path)


def check_backbone(spec: str, weights: str | None = None) -> None:
    """A usage error when ``spec`` (with ``weights``) names no backbone or weights featx knows -- checked from the
    registries alone, without building a model (``featx rank`` checks every candidate before extracting any)."""
    spec = family_name(spec)
    if spec.startswith(("timm:", "clip:")) or spec in EXTRA_BACKBONES:
        return  # timm's names are checked when timm loads them; the embedded ones are known
    name, weights_name = parse_backbone(spec, weights)
    if quick_check(name, weights_name):
        return
    if not is_file_spec(weights_name):
        torchvision_models.resolve_weights(name, weights_name, other_names=EXTRA_BACKBONES)


def load_backbone(spec: str, weights: str | None = None, *, device: str | torch.device = "cpu",
                  layer: str | None = None, pooling: str | None = None) -> Backbone:
    """Build a frozen backbone.

    Args:
        spec: a torchvision model name (optionally ``name:WEIGHTS``), ``efficientnet_lite0``
            (embedded, needs timm) or ``timm:<name>`` (needs timm and the weights in the local
            Hugging Face cache).
        weights: weights enum member name (``IMAGENET1K_V1``), ``DEFAULT``/``None`` for the
            default, ``"none"`` for random init (seeded), or a local ``.pth`` state dict
            (loaded with ``weights_only=True``, preprocessed as the model's default weights).
        device: where the model lives.
        layer: an intermediate node (``torchvision.models.feature_extraction`` name) whose
            output is global-average-pooled instead of the penultimate embedding.
        pooling: for ViTs (timm and OpenCLIP): ``cls``, ``mean`` or ``cls+mean`` of the last tokens instead of the
            model's own pooling (recorded, part of the cache key).
    """
    spec = family_name(spec)
    if pooling and layer:
        raise FeatxUsageError("--pooling and --layers do not combine: pooling chooses how a ViT's last tokens become "
                              "the embedding; leave one out")
    if spec.startswith("clip:"):
        from . import clip_models

        name = spec
        loaded = clip_models.load(spec, weights, pooling=pooling)
    elif spec.startswith("timm:") or spec in EXTRA_BACKBONES:
        from . import timm_models

        name, weights_name = (spec, weights) if spec.startswith("timm:") else parse_backbone(spec, weights)
        loaded = timm_models.load(name, weights_name, pooling=pooling)
    else:
        if pooling:
            raise FeatxUsageError("--pooling applies to the ViTs of the timm: and clip: families; leave it out for "
                                  f"{spec}")
        name, weights_name = parse_backbone(spec, weights)
        try:
            loaded = torchvision_models.load(name, weights_name, other_names=EXTRA_BACKBONES)
        except torchvision_models.WeightsUnavailable as exc:
            here = [f"{b.name} {b.weights}" for b in list_backbones(offline_only=True)]
            raise FeatxError(f"{exc}; available offline here (featx backbones): {', '.join(here) or 'none'}") from None
    model, dim, preset = loaded.model, loaded.feature_dim, loaded.preset
    model.eval().requires_grad_(False)
    parts = []
    if layer and (layer == STAGES or "," in layer):
        model, dim, parts = _at_layers(model, layer, preset, dim)
    elif layer:
        model, dim = _at_layer(model, layer, preset)
        model.requires_grad_(False)
    return Backbone(
        name=name.replace(":", "-"),
        weights=loaded.weights,
        model=model.to(device),
        transform=RGBTransform(preset),
        preprocess=preprocess_record(preset),
        feature_dim=dim,
        weights_sha256=loaded.sha256,
        meta={**loaded.meta, **({"layer_parts": [list(p) for p in parts]} if parts else {})},
        layer=layer,
        pooling=pooling or None,
    )


def list_backbones(*, offline_only: bool = False) -> list[BackboneInfo]:
    """Every torchvision classification model and weights, with embedding size and accuracy,
    then the embedded timm backbones.

    Args:
        offline_only: only weights whose file is available without a download.
    """
    from torchvision.models import get_model_weights

    tv = torchvision_models
    rows = []
    for name in tv.classification_models():
        have = tv.offline_weights(name)
        if offline_only and not have:
            continue
        enum = get_model_weights(name)
        dim = tv.embedding_dim(name)
        rows += [BackboneInfo(name=name, weights=w.name, is_default=w is enum.DEFAULT, feature_dim=dim,
                              params=w.meta.get("num_params"), top1=tv.imagenet_top1(w), offline=w.name in have)
                 for w in enum if not offline_only or w.name in have]
    rows.extend(_extra_rows())
    return rows


def _extra_rows() -> list[BackboneInfo]:
    """The embedded EfficientNet-Lite0/1/2 (listed when timm is installed)."""
    if importlib.util.find_spec("timm") is None:
        return []
    from . import timm_models

    rows = []
    for name, lite in timm_models.EMBEDDED_LITE.items():
        try:
            timm_models.lite_weights_file(name)
            have = True
        except FeatxError:
            have = False
        dim, params = timm_models.lite_shape(name)
        rows.append(BackboneInfo(name=name, weights="IMAGENET1K", is_default=True, feature_dim=dim, params=params,
                                 top1=lite.top1, offline=have))
    return rows


@dataclass(frozen=True)
class FamilyRow:
    """One row of ``featx backbones``' other families: a suggested backbone of the timm: or clip: family."""

    name: str
    what: str
    feature_dim: int | None
    licence: str
    offline: bool
    missing: str | None = None  # the extra to install when its library is not here


def family_rows() -> list[FamilyRow]:
    """The suggested backbones of the timm: and clip: families (:data:`featx.backbones.names.SUGGESTED`): embedding
    size read off the architecture (built on the meta device: no memory, no weights), the weights' licence, and
    whether the weights are on this machine (the Hugging Face / OpenCLIP cache)."""
    from .names import FAMILIES, SUGGESTED

    rows = []
    for name, what, licence in SUGGESTED:
        prefix = name[:5]
        module = {"timm:": "timm", "clip:": "open_clip"}[prefix]
        if importlib.util.find_spec(module) is None:
            rows.append(FamilyRow(name, what, None, licence, False, missing=FAMILIES[prefix][1]))
            continue
        dim, offline, stated = (_timm_row if prefix == "timm:" else _clip_row)(name)
        rows.append(FamilyRow(name, what, dim, stated or licence, offline))
    return rows


def _in_hf_cache(hub_id: str) -> bool:
    """Whether the local Hugging Face cache holds files of the hub repository ``org/name`` (no network)."""
    from .loading import hf_cache_files

    return bool(hf_cache_files(hub_id))


def _timm_row(name: str) -> tuple[int, bool, str | None]:
    import timm

    from .timm_models import declared_dim

    with torch.device("meta"):
        model = timm.create_model(name.removeprefix("timm:"), pretrained=False)
    cfg = model.pretrained_cfg
    return declared_dim(model), _in_hf_cache(str(cfg.get("hf_hub_id") or "")), cfg.get("license")  # timm's record


def _clip_row(name: str) -> tuple[int | None, bool, None]:
    import open_clip

    from .clip_models import parse

    arch, tag = parse(name)
    config = open_clip.get_model_config(arch) or {}
    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "") if tag else ""
    return int(config.get("embed_dim") or 0) or None, _in_hf_cache(hub), None
