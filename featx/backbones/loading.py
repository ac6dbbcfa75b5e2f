"""Weight loading shared by every backbone family (torchvision and timm both import this; it imports neither).

- :class:`LoadedModel`: what a family's loader returns (a record, not a tuple).
- :func:`load_state_file` / :func:`load_into`: a local state dict, loaded with ``weights_only=True``
  and put into a model with every key and shape checked.
- :func:`weights_only_loads`: make any ``torch.load`` inside a third-party builder use
  ``weights_only=True``, through torch's documented ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch.
- :func:`seeded_init`: random initialisation that is the same on every run.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import FeatxError, FeatxUsageError
from ..util import file_sha256, first_line
from .names import is_file_spec

__all__ = ["hf_cache_files", "LoadedModel", "is_file_spec", "load_state_file", "load_into", "weights_only_loads", "seeded_init"]


@dataclass
class LoadedModel:
    """A backbone family's loader result: the network without its classifier and how to feed it.

    Attributes:
        model: returns ``(N, feature_dim)`` embeddings.
        feature_dim: embedding size.
        preset: the eval transform (``weights.transforms()`` or a :class:`featx.data.decoding.Preset`).
        weights: the weights' label as recorded (``IMAGENET1K_V1``, ``none``, ``file:x.pth``).
        sha256: the weight file's sha256 (``None`` for random init).
        meta: ImageNet top-1, parameter count, url, ... where known.
    """

    model: nn.Module
    feature_dim: int
    preset: Callable
    weights: str
    sha256: str | None
    meta: dict = field(default_factory=dict)


def load_state_file(path: str | os.PathLike) -> tuple[dict, str]:
    """A local state dict -- a torch file loaded with ``weights_only=True`` (a checkpoint's ``state_dict`` or
    ``model`` entry taken), or a ``.safetensors`` file -- and the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise FeatxUsageError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise FeatxError(f"weights file {path} is safetensors: `pip install 'featx[finetune]'` (make install does)") from None
    except Exception as exc:  # pickle errors, zip errors, refused globals, a damaged safetensors header
        raise FeatxError(f"weights file {path} is not a plain state dict (weights_only=True): {first_line(exc)}") from None
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers (Lightning, timm's train script)
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise FeatxError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state, file_sha256(path)


def load_into(model: nn.Module, state: dict, where: str, drop_prefix: str | None = None) -> None:
    """``model.load_state_dict(state)`` with a one-line error naming what does not fit."""
    if drop_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(drop_prefix + ".")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), first_line(exc))
        raise FeatxError(f"weights {where} do not fit {type(model).__name__}: {detail}") from None
    if missing or unexpected:
        raise FeatxError(
            f"weights {where} do not fit {type(model).__name__}: {len(missing)} missing keys"
            f"{' (e.g. ' + missing[0] + ')' if missing else ''}, {len(unexpected)} unexpected"
            f"{' (e.g. ' + unexpected[0] + ')' if unexpected else ''}"
        )


#: torch's documented switch: every ``torch.load`` uses ``weights_only=True``, even where the caller
#: passed ``weights_only=False`` (as ``torch.hub.load_state_dict_from_url`` does by default).
FORCE_WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_loads():
    """Within the block, every ``torch.load`` -- including the one inside torchvision's builders
    (``weights.get_state_dict`` -> ``torch.hub.load_state_dict_from_url``, which defaults to
    ``weights_only=False``) -- loads tensors only and cannot run code from the file.
    """
    saved = os.environ.get(FORCE_WEIGHTS_ONLY_ENV)
    os.environ[FORCE_WEIGHTS_ONLY_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY_ENV] = saved


def hf_cache_files(hub_id: str, pattern: str = "*") -> list[Path]:
    """The files of the Hugging Face hub repository ``org/name`` (a trailing path or slash ignored) in this
    machine's hub cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) matching ``pattern``; no network."""
    cache = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
    repo = "--".join(hub_id.strip("/").split("/")[:2])
    return sorted(cache.glob(f"models--{repo}/snapshots/*/{pattern}")) if repo else []


@contextlib.contextmanager
def seeded_init(seed: int = 0):
    """Random initialisation that is the same on every run (``--weights none``), global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
