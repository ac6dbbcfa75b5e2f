"""Frozen backbones: the registry (:mod:`.registry`), the torchvision and timm families
(:mod:`.torchvision_models`, :mod:`.timm_models`) and their shared loading code (:mod:`.loading`)."""

from .registry import Backbone, BackboneInfo, list_backbones, load_backbone, parse_backbone

__all__ = ["Backbone", "BackboneInfo", "list_backbones", "load_backbone", "parse_backbone"]
