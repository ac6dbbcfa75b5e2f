"""Vision-language backbones through OpenCLIP (the optional ``featx[clip]`` extra, ``open_clip_torch``).

- ``clip:ARCH`` or ``clip:ARCH/PRETRAINED_TAG`` (OpenCLIP's names: ``clip:ViT-B-32/laion2b_s34b_b79k``,
  ``clip:ViT-B-16-SigLIP/webli``): the image tower's embedding (``model.encode_image``, unnormalised) like any
  backbone; the weights come from OpenCLIP's hub download online (the real code path) or its local cache offline.
- ``--weights none``: the architecture with seeded random init, no download.
- ``--weights-file PATH``: a local checkpoint of the architecture (torch state dict or safetensors), or a folder in
  OpenCLIP's own layout (``open_clip_config.json`` + weights; the architecture then comes from the folder, so a
  custom or tiny configuration works offline). The file's (or folder's) sha256 is recorded.
- Preprocessing: the model's own (``model.visual.preprocess_cfg``: size, mean, std, interpolation; OpenCLIP's
  ``resize_mode`` shortest = featx's centre crop, squash = squash).
- The text tower is kept for heads: :func:`text_classifier` builds a zero-shot classifier from class names and
  prompt templates with OpenCLIP's own ``build_zero_shot_classifier``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..data.decoding import Preset
from ..errors import FeatxError, FeatxUsageError
from ..util import did_you_mean, file_sha256, first_line, offline
from .loading import LoadedModel, load_into, load_state_file, seeded_init, weights_only_loads
from .names import is_file_spec

__all__ = ["PREFIX", "parse", "load", "build", "text_classifier", "imagenet_templates"]

PREFIX = "clip:"


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise FeatxError("clip: backbones need OpenCLIP: `pip install 'featx[clip]'` (make install does)") from None
    return open_clip


def parse(name: str) -> tuple[str, str | None]:
    """``clip:ARCH/TAG`` (or the recorded ``clip-ARCH/TAG``) -> ``(ARCH, TAG or None)``."""
    rest = name[len(PREFIX):] if name.startswith((PREFIX, "clip-")) else name
    arch, _, tag = rest.partition("/")
    return arch, tag or None


def _check_arch(oc, arch: str) -> None:
    if arch not in oc.list_models():
        raise FeatxUsageError(f"OpenCLIP has no architecture {arch!r}; {did_you_mean(arch, oc.list_models())}"
                              "open_clip.list_models() lists them")


@contextlib.contextmanager
def _quiet_root_logger():
    """OpenCLIP warns through the root logger ("no pretrained weights loaded"): featx says what it loaded itself."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _folder_sha256(folder: Path) -> str:
    """One sha256 over an OpenCLIP folder's config and weight files (names and contents, in name order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".pth")):
        h.update(f.name.encode())
        h.update(bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def build(name: str, weights: str | None):
    """The whole OpenCLIP model (image and text towers) -> ``(model, weights label, sha256, meta)``."""
    oc = _open_clip()
    arch, tag = parse(name)
    if weights and Path(weights).is_dir():  # OpenCLIP's own folder layout: the architecture comes from it
        folder = Path(weights)
        if not (folder / "open_clip_config.json").is_file():
            raise FeatxUsageError(f"{folder} is a folder without open_clip_config.json; name a weights file, or a "
                                  "folder in OpenCLIP's layout (open_clip_config.json + weights)")
        try:
            with seeded_init(), weights_only_loads(), _quiet_root_logger():  # OpenCLIP logs on the root logger
                model = oc.create_model(f"local-dir:{folder}")
        except Exception as exc:  # a bad config, weights that do not fit it
            raise FeatxError(f"OpenCLIP could not build {folder}: {first_line(exc)}") from None
        meta = {"weights_file": str(folder.resolve())}
        if not any(p.suffix in (".safetensors", ".bin", ".pth") for p in folder.iterdir()):
            meta["random_init"] = "the folder holds a configuration and no weights: seeded random init"
        return model, f"file:{folder.name}", _folder_sha256(folder), meta
    _check_arch(oc, arch)
    if weights is not None and weights.lower() == "none":
        with seeded_init():
            return oc.create_model(arch, pretrained=None), "none", None, {}
    if is_file_spec(weights):
        with seeded_init():
            model = oc.create_model(arch, pretrained=None)
        state, sha = load_state_file(weights)
        load_into(model, state, str(weights))
        return model, f"file:{Path(weights).name}", sha, {"weights_file": str(Path(weights).resolve())}
    tag = tag or (weights if weights not in (None, "DEFAULT") else None)
    tags = oc.list_pretrained_tags_by_model(arch)
    if tag is None:
        if not tags:
            raise FeatxUsageError(f"OpenCLIP has no pretrained weights for {arch}; use --weights none or --weights-file")
        tag = tags[0]
    elif tag not in tags:
        raise FeatxUsageError(f"OpenCLIP has no weights {tag!r} for {arch}; {did_you_mean(tag, tags)}"
                              f"it has: {', '.join(tags) or 'none'}")
    if offline():
        os.environ["HF_HUB_OFFLINE"] = "1"
    cfg = oc.get_pretrained_cfg(arch, tag)
    try:
        with weights_only_loads():
            model = oc.create_model(arch, pretrained=tag)  # the tag: its own preprocessing config comes with it
            path = oc.download_pretrained(cfg)  # the file it loaded (from the local cache now), for its sha256
    except Exception as exc:  # not in the local cache while offline, download errors
        raise FeatxError(f"OpenCLIP weights {arch}/{tag} are not in the local cache ({type(exc).__name__}); run once "
                         "online, or give --weights-file PATH, or --weights none") from None
    return model, tag, file_sha256(path), {"hub": cfg.get("hf_hub") or cfg.get("url") or ""}


def _preset(cfg: dict) -> Preset:
    size = cfg.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mode = {"shortest": "center", "squash": "squash"}.get(cfg.get("resize_mode") or "shortest")
    if mode is None:
        raise FeatxUsageError(f"this OpenCLIP model resizes with resize_mode {cfg.get('resize_mode')!r}; featx "
                              "supports shortest and squash")
    return Preset(crop_size=size, resize_size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                  interpolation=cfg.get("interpolation") or "bicubic", crop_mode=mode)


class ClipImage(nn.Module):
    """OpenCLIP's image tower: ``encode_image`` (the projected, unnormalised embedding), optionally pooled another
    way (``cls``, ``mean`` of the patch tokens, or both, each projected) for OpenCLIP's own ViTs."""

    def __init__(self, visual: nn.Module, pooling: str | None = None):
        super().__init__()
        self.visual = visual
        if pooling:
            if not hasattr(visual, "_global_pool") or getattr(visual, "attn_pool", None) is not None:
                raise FeatxUsageError(f"--pooling applies to OpenCLIP's own ViTs; this image tower is a "
                                      f"{type(visual).__name__} (leave --pooling out)")
            visual._global_pool = _token_pool(pooling)

    def forward(self, x):
        return self.visual(x).flatten(1)


def _token_pool(pooling: str):
    """A replacement for OpenCLIP ViT's ``_global_pool``: ``(pooled, tokens)`` with ``pooled`` the class token, the
    patch tokens' mean or both stacked (``(N, 2, D)``, each then projected by the tower)."""
    def pool(x):
        cls, mean = x[:, 0], x[:, 1:].mean(dim=1)
        pooled = {"cls": cls, "mean": mean, "cls+mean": torch.stack([cls, mean], dim=1)}[pooling]
        return pooled, x[:, 1:]
    return pool


def load(name: str, weights: str | None, *, pooling: str | None = None) -> LoadedModel:
    """The image tower of an OpenCLIP model as a backbone (the text tower is rebuilt by :func:`text_classifier`)."""
    model, label, sha, meta = build(name, weights)
    preset = _preset(getattr(model.visual, "preprocess_cfg", None) or {})
    image = ClipImage(model.visual, pooling).eval()
    with torch.inference_mode():
        dim = int(image(torch.zeros(1, 3, preset.crop_size[0], preset.crop_size[0])).shape[1])
    meta = {**meta, "num_params": sum(p.numel() for p in model.visual.parameters()), "text_tower": True}
    return LoadedModel(image, dim, preset, label, sha, meta)


def imagenet_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates (OpenAI), as format strings (``"a photo of a {}."``)."""
    return [t("{}") for t in _open_clip().OPENAI_IMAGENET_TEMPLATES]


def text_classifier(name: str, weights: str | None, class_names: list[str], templates: list[str],
                    *, device: str = "cpu") -> tuple["np.ndarray", float, str | None]:  # noqa: F821
    """Zero-shot weights ``(C, D)`` (each class's text embedding averaged over the templates, L2-normalised:
    OpenCLIP's ``build_zero_shot_classifier``), the model's logit scale and the weights' sha256."""
    oc = _open_clip()
    model, _, sha, meta = build(name, weights)
    arch, _ = parse(name)
    with _quiet_root_logger():
        tokenizer = oc.get_tokenizer(f"local-dir:{meta['weights_file']}" if Path(str(weights)).is_dir() else arch)
    model = model.eval().to(device)
    weights_dc = oc.build_zero_shot_classifier(model, tokenizer, class_names, templates, device=device)
    return weights_dc.T.float().cpu().numpy(), float(model.logit_scale.exp().item()), sha
