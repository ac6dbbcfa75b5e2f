"""Backbone names and weights, known without importing torch or torchvision, so that a misspelt ``--backbone`` or
``--weights`` is refused in a fraction of a second, before any model or dataset is loaded.

:data:`TORCHVISION_WEIGHTS` is torchvision's classification models and their weights enum members as of
:data:`TORCHVISION_VERSION` (``tests/test_backbones.py`` checks it against the installed torchvision; regenerate it from
``featx.backbones.names._generate()``). With another torchvision installed, names it does not list are passed on to the
full check, which asks torchvision itself.
"""

from __future__ import annotations

import os
from importlib import metadata

from ..errors import FeatxUsageError
from ..util import did_you_mean

__all__ = ["EXTRA_BACKBONES", "FAMILIES", "SUGGESTED", "WEIGHT_FILE_SUFFIXES", "TORCHVISION_VERSION", "TORCHVISION_WEIGHTS", "is_file_spec", "parse_backbone",
           "quick_check", "table_is_current"]

#: Backbones that are not torchvision models: name -> what it is (see featx/backbones/timm_models.py).
EXTRA_BACKBONES = {
    f"efficientnet_lite{n}": f"ImageNet EfficientNet-Lite{n} (timm tf_efficientnet_lite{n} architecture, embedded weights)"
    for n in (0, 1, 2)
}

#: Local weight files featx reads (``--weights-file``): torch state dicts (loaded with ``weights_only=True``) and
#: safetensors; a folder (OpenCLIP's ``open_clip_config.json`` + its weights) is named by a path.
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

#: The families ``--backbone`` takes beyond torchvision's names: prefix -> (what, the optional extra it needs).
FAMILIES = {
    "timm:": ("any timm model, timm:NAME[.TAG] (ViTs incl. DINOv2, ConvNeXt, EfficientNet, ...)", "timm"),
    "clip:": ("an OpenCLIP image tower, clip:ARCH or clip:ARCH/PRETRAINED_TAG (CLIP, SigLIP, ...); text tower for "
              "the zero-shot head", "clip"),
}

#: Strong frozen-feature backbones of other families, listed by ``featx backbones`` (the name, what it is, the
#: licence of its weights as their publishers state it). Their weights come from the Hugging Face hub when online,
#: or a local file (``--weights-file``); ``--weights none`` builds each with random init, offline.
SUGGESTED = (
    ("timm:vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14 (self-supervised, Meta 2023)", "Apache-2.0"),
    ("timm:vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14 (self-supervised, Meta 2023)", "Apache-2.0"),
    ("timm:vit_small_patch14_reg4_dinov2.lvd142m", "DINOv2 ViT-S/14 with 4 registers", "Apache-2.0"),
    ("timm:convnext_tiny.fb_in22k_ft_in1k", "ConvNeXt-T, ImageNet-22k then 1k", "Apache-2.0"),
    ("timm:mobilenetv3_large_100.ra_in1k", "MobileNetV3-Large (timm RandAugment recipe)", "Apache-2.0"),
    ("timm:efficientnet_b0.ra_in1k", "EfficientNet-B0 (timm recipe)", "Apache-2.0"),
    ("timm:resnet50.a1_in1k", "ResNet-50 (ResNet strikes back A1)", "Apache-2.0"),
    ("clip:ViT-B-32/laion2b_s34b_b79k", "OpenCLIP ViT-B/32 on LAION-2B (vision-language)", "MIT"),
    ("clip:ViT-B-32/openai", "OpenAI CLIP ViT-B/32 (vision-language)", "MIT"),
    ("clip:ViT-B-16-SigLIP/webli", "SigLIP ViT-B/16 (vision-language, sigmoid loss)", "Apache-2.0"),
)

TORCHVISION_VERSION = "0.29.1"

#: model name -> its weights enum members (``torchvision.models.get_model_weights``), as of TORCHVISION_VERSION.
TORCHVISION_WEIGHTS: dict[str, tuple[str, ...]] = {'alexnet': ('IMAGENET1K_V1',),
 'convnext_base': ('IMAGENET1K_V1',),
 'convnext_large': ('IMAGENET1K_V1',),
 'convnext_small': ('IMAGENET1K_V1',),
 'convnext_tiny': ('IMAGENET1K_V1',),
 'densenet121': ('IMAGENET1K_V1',),
 'densenet161': ('IMAGENET1K_V1',),
 'densenet169': ('IMAGENET1K_V1',),
 'densenet201': ('IMAGENET1K_V1',),
 'efficientnet_b0': ('IMAGENET1K_V1',),
 'efficientnet_b1': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'efficientnet_b2': ('IMAGENET1K_V1',),
 'efficientnet_b3': ('IMAGENET1K_V1',),
 'efficientnet_b4': ('IMAGENET1K_V1',),
 'efficientnet_b5': ('IMAGENET1K_V1',),
 'efficientnet_b6': ('IMAGENET1K_V1',),
 'efficientnet_b7': ('IMAGENET1K_V1',),
 'efficientnet_v2_l': ('IMAGENET1K_V1',),
 'efficientnet_v2_m': ('IMAGENET1K_V1',),
 'efficientnet_v2_s': ('IMAGENET1K_V1',),
 'googlenet': ('IMAGENET1K_V1',),
 'inception_v3': ('IMAGENET1K_V1',),
 'maxvit_t': ('IMAGENET1K_V1',),
 'mnasnet0_5': ('IMAGENET1K_V1',),
 'mnasnet0_75': ('IMAGENET1K_V1',),
 'mnasnet1_0': ('IMAGENET1K_V1',),
 'mnasnet1_3': ('IMAGENET1K_V1',),
 'mobilenet_v2': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'mobilenet_v3_large': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'mobilenet_v3_small': ('IMAGENET1K_V1',),
 'regnet_x_16gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_x_1_6gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_x_32gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_x_3_2gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_x_400mf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_x_800mf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_x_8gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_y_128gf': ('IMAGENET1K_SWAG_E2E_V1', 'IMAGENET1K_SWAG_LINEAR_V1'),
 'regnet_y_16gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2', 'IMAGENET1K_SWAG_E2E_V1', 'IMAGENET1K_SWAG_LINEAR_V1'),
 'regnet_y_1_6gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_y_32gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2', 'IMAGENET1K_SWAG_E2E_V1', 'IMAGENET1K_SWAG_LINEAR_V1'),
 'regnet_y_3_2gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_y_400mf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_y_800mf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'regnet_y_8gf': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'resnet101': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'resnet152': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'resnet18': ('IMAGENET1K_V1',),
 'resnet34': ('IMAGENET1K_V1',),
 'resnet50': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'resnext101_32x8d': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'resnext101_64x4d': ('IMAGENET1K_V1',),
 'resnext50_32x4d': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'shufflenet_v2_x0_5': ('IMAGENET1K_V1',),
 'shufflenet_v2_x1_0': ('IMAGENET1K_V1',),
 'shufflenet_v2_x1_5': ('IMAGENET1K_V1',),
 'shufflenet_v2_x2_0': ('IMAGENET1K_V1',),
 'squeezenet1_0': ('IMAGENET1K_V1',),
 'squeezenet1_1': ('IMAGENET1K_V1',),
 'swin_b': ('IMAGENET1K_V1',),
 'swin_s': ('IMAGENET1K_V1',),
 'swin_t': ('IMAGENET1K_V1',),
 'swin_v2_b': ('IMAGENET1K_V1',),
 'swin_v2_s': ('IMAGENET1K_V1',),
 'swin_v2_t': ('IMAGENET1K_V1',),
 'vgg11': ('IMAGENET1K_V1',),
 'vgg11_bn': ('IMAGENET1K_V1',),
 'vgg13': ('IMAGENET1K_V1',),
 'vgg13_bn': ('IMAGENET1K_V1',),
 'vgg16': ('IMAGENET1K_V1', 'IMAGENET1K_FEATURES'),
 'vgg16_bn': ('IMAGENET1K_V1',),
 'vgg19': ('IMAGENET1K_V1',),
 'vgg19_bn': ('IMAGENET1K_V1',),
 'vit_b_16': ('IMAGENET1K_V1', 'IMAGENET1K_SWAG_E2E_V1', 'IMAGENET1K_SWAG_LINEAR_V1'),
 'vit_b_32': ('IMAGENET1K_V1',),
 'vit_h_14': ('IMAGENET1K_SWAG_E2E_V1', 'IMAGENET1K_SWAG_LINEAR_V1'),
 'vit_l_16': ('IMAGENET1K_V1', 'IMAGENET1K_SWAG_E2E_V1', 'IMAGENET1K_SWAG_LINEAR_V1'),
 'vit_l_32': ('IMAGENET1K_V1',),
 'wide_resnet101_2': ('IMAGENET1K_V1', 'IMAGENET1K_V2'),
 'wide_resnet50_2': ('IMAGENET1K_V1', 'IMAGENET1K_V2')}


def parse_backbone(spec: str, weights: str | None = None) -> tuple[str, str | None]:
    """``"resnet50:IMAGENET1K_V2"`` -> ``("resnet50", "IMAGENET1K_V2")``; ``weights`` wins if both given."""
    name, _, inline = spec.partition(":")
    return name.strip(), (weights or inline or None)


def is_file_spec(weights: str | None) -> bool:
    """Whether a ``--weights`` value names a local file rather than an enum member."""
    return bool(weights) and (weights.endswith(WEIGHT_FILE_SUFFIXES) or os.sep in weights)


def table_is_current() -> bool:
    """Whether the installed torchvision is the one :data:`TORCHVISION_WEIGHTS` was read from (no import)."""
    try:
        return metadata.version("torchvision").split("+")[0] == TORCHVISION_VERSION
    except metadata.PackageNotFoundError:
        return False


def quick_check(name: str, weights: str | None) -> bool:
    """Refuse an unknown torchvision backbone or weights name in one line, from the table; ``True`` when the table
    settled it (known), ``False`` when only torchvision can tell (another torchvision, a timm or file spec)."""
    if name.startswith(("timm:", "clip:")) or name in EXTRA_BACKBONES:
        return False
    if name not in TORCHVISION_WEIGHTS:
        if not table_is_current():
            return False
        hint = did_you_mean(name, [*TORCHVISION_WEIGHTS, *EXTRA_BACKBONES])
        raise FeatxUsageError(f"unknown backbone {name!r}; {hint}`featx backbones --all` lists them")
    if weights is None or weights.lower() == "none" or is_file_spec(weights):
        return True
    key = weights.split(".")[-1]
    known = TORCHVISION_WEIGHTS[name]
    if key == "DEFAULT" or key in known:
        return True
    if not table_is_current():
        return False
    hint = did_you_mean(key, known, n=2)
    raise FeatxUsageError(f"backbone {name} has no weights {weights!r}; {hint}it has: {', '.join(known)}, none, "
                          "or a .pth file")


def _generate() -> str:
    """This module's table from the installed torchvision (paste it over the table after an upgrade)."""
    import pprint

    from torchvision import models as tvm

    table = {n: tuple(w.name for w in tvm.get_model_weights(n)) for n in tvm.list_models(module=tvm)}
    return pprint.pformat(table, width=118, compact=True, sort_dicts=True)
