"""Frozen backbones: the registry (:mod:`.registry`), the torchvision and timm families
(:mod:`.torchvision_models`, :mod:`.timm_models`) and their shared loading code (:mod:`.loading`)."""

__all__ = ["Backbone", "BackboneInfo", "list_backbones", "load_backbone", "parse_backbone"]


def __getattr__(name: str):
    """The registry's names, imported on first use: :mod:`.names` (no torch) stays importable in a fraction of a
    second, so that a misspelt backbone is refused before torch loads."""
    if name in __all__:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
