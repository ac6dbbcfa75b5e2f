"""What the features of a cache are: one record, :class:`EmbeddingSpec`, used wherever featx asks "same features?".

In the spirit of timm's ``PretrainedCfg`` and torchvision's ``Weights``: one frozen value that names the backbone,
its weights (and their sha256), the layer, the preprocessing record, the numeric precision, the *effective*
decoder and the embedding size. Everything that compares features uses it: the cache key and file name
(:meth:`EmbeddingSpec.key`, :func:`cache_path`), row reuse across caches, a head's card (``featx predict`` rebuilds
the backbone from it and refuses another), ``featx adapt`` (source and target must share one feature space).

Keys stay what they were before this record existed: :meth:`EmbeddingSpec.key` hashes the same JSON record (the
layer only when one is set, the decoder only when it is not the exact path), so every existing cache is found
and reused under its old name. Caches written before a field was recorded read it as its default
(penultimate layer, fp32, the exact decoder).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = ["EmbeddingSpec", "EXACT_DECODERS", "effective_decoder", "cache_path", "file_stem", "SCHEMA_VERSION"]

#: Version of the HDF5 layout (the ``schema_version`` root attribute; part of every cache key).
SCHEMA_VERSION = 1
#: Decoder records that mean "the exact path" (PIL; a dataset held in memory has no file to decode and goes the
#: same way): features made through either are the same features.
EXACT_DECODERS = ("pil", "in-memory")
#: How a cache records "the penultimate layer".
PENULTIMATE = "penultimate"


def effective_decoder(decoder: str, *, has_files: bool, on_device: bool = False) -> str:
    """The decoder that actually made the features: ``decoder`` for a source of image files, or for a decoder that
    preprocesses on the device (it applies to in-memory datasets too); ``"in-memory"`` for a dataset without files,
    whose images are never decoded. The one place this rule is written."""
    return decoder if has_files or on_device else "in-memory"


@dataclass(frozen=True)
class EmbeddingSpec:
    """The one record of what a cache's features are.

    Attributes:
        backbone: the registry name (``mobilenet_v2``, ``efficientnet_lite0``, ``timm:<name>``).
        weights: the weights' name (``IMAGENET1K_V1``), ``"none"`` for random init, or a file.
        weights_sha256: sha256 of the weight file; ``None`` when there is none (random init).
        layer: the intermediate node the embedding is pooled from; ``None`` = the penultimate layer.
        transform: the preprocessing record (input size, resize, crop, interpolation, mean, std).
        precision: the forward pass's precision (``featx.options.PRECISIONS``).
        decoder: the effective decoder (:func:`effective_decoder`).
        feature_dim: the embedding size; 0 when unknown (it never decides a difference then).
        pooling: how a ViT's last tokens became the embedding (``cls``, ``mean``, ``cls+mean``, ``--pooling``);
            ``None`` = the model's own pooling.
    """

    backbone: str
    weights: str | None
    weights_sha256: str | None = None
    layer: str | None = None
    transform: dict = field(default_factory=dict, hash=False)
    precision: str = "fp32"
    decoder: str = "pil"
    feature_dim: int = 0
    pooling: str | None = None

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def of(cls, backbone, *, precision: str = "fp32", decoder: str = "pil", has_files: bool = True) -> "EmbeddingSpec":
        """The spec of ``backbone`` (a :class:`featx.backbones.registry.Backbone`) run with these settings."""
        from ..options import DECODERS

        return cls(backbone=backbone.name, weights=backbone.weights, weights_sha256=backbone.weights_sha256 or None,
                   layer=backbone.layer or None, transform=dict(backbone.preprocess), precision=precision,
                   decoder=effective_decoder(decoder, has_files=has_files, on_device=DECODERS[decoder].on_device),
                   feature_dim=int(backbone.feature_dim), pooling=getattr(backbone, "pooling", None) or None)

    @classmethod
    def from_attrs(cls, attrs: dict) -> "EmbeddingSpec":
        """The spec recorded in a cache's root attributes (or a head card's ``embedding`` record)."""
        layer = attrs.get("layer")
        transform = attrs.get("transform") or {}
        if isinstance(transform, str):
            transform = json.loads(transform)
        return cls(backbone=str(attrs.get("backbone") or ""), weights=attrs.get("weights"),
                   weights_sha256=attrs.get("weights_sha256") or None,
                   layer=None if layer in (None, "", PENULTIMATE) else str(layer), transform=dict(transform),
                   precision=str(attrs.get("precision") or "fp32"), decoder=str(attrs.get("decoder") or "pil"),
                   feature_dim=int(attrs.get("feature_dim") or 0), pooling=attrs.get("pooling") or None)

    def to_attrs(self) -> dict:
        """The cache attributes (and card record) that hold this spec."""
        return {"backbone": self.backbone, "weights": self.weights, "weights_sha256": self.weights_sha256 or "",
                "layer": self.layer or PENULTIMATE, "transform": dict(self.transform), "precision": self.precision,
                "decoder": self.decoder, "feature_dim": self.feature_dim,
                **({"pooling": self.pooling} if self.pooling else {})}

    # -- identity ----------------------------------------------------------------------------------
    def key(self, source_fingerprint) -> str:
        """The cache key of these features over a source's item list (16 hex digits).

        Hashes the same record featx has always hashed, so existing caches keep their names."""
        record = {
            "schema_version": SCHEMA_VERSION,
            "source": source_fingerprint,
            "backbone": self.backbone,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "transform": self.transform,
            "precision": self.precision,
        }
        if self.layer:  # only when set, so that penultimate-layer keys stay as they were
            record["layer"] = self.layer
        if self.pooling:  # idem for a ViT's pooling chosen with --pooling
            record["pooling"] = self.pooling
        if self.decoder not in EXACT_DECODERS:  # idem for the exact decoder
            record["decoder"] = self.decoder
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: "EmbeddingSpec") -> list[str]:
        """The fields in which two specs' features differ (empty: the same features)."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "decoder":
                mine, theirs = (("pil" if d in EXACT_DECODERS else d) for d in (mine, theirs))
            if f.name == "feature_dim" and 0 in (mine, theirs):
                continue
            if f.name == "weights_sha256" and None in (mine, theirs) and other.weights == self.weights:
                continue  # a record without the sha256 (an older card): the weights' name decides
            if mine != theirs:
                out.append(f.name)
        return out

    def same_features(self, other: "EmbeddingSpec") -> bool:
        """Whether a row of one is a row of the other for the same image."""
        return not self.differences(other)

    def difference(self, other: "EmbeddingSpec", *, mine: str = "here", theirs: str = "there") -> str:
        """One phrase naming what differs (``precision 'fp32' here, 'bf16' there``); ``""`` when nothing does."""
        parts = []
        for name in self.differences(other):
            if name == "transform":
                parts.append(f"the transform differs ({_short(self.transform)} {mine}, {_short(other.transform)} "
                             f"{theirs})")
            else:
                parts.append(f"{name.replace('_', ' ')} {_short(getattr(self, name))} {mine}, "
                             f"{_short(getattr(other, name))} {theirs}")
        return "; ".join(parts)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def cache_path(cache_dir: str | os.PathLike, source_name: str, backbone_name: str, key: str) -> Path:
    """``<cache_dir>/<source>/<backbone>-<key>.h5``: where a cache of these features lives by default."""
    return Path(cache_dir) / source_name / f"{file_stem(backbone_name)}-{key}.h5"


def file_stem(backbone_name: str) -> str:
    """A backbone's name as it starts a file name (``clip:ViT-B-32/openai`` -> ``clip-ViT-B-32-openai``)."""
    return backbone_name.replace(":", "-").replace("/", "-")
