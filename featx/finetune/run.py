"""``featx finetune``: the textbook "freeze the bottom layers, train the top ones", with the bottom run once.

1. **Cut**: the backbone's trunk (:func:`featx.backbones.registry.trunk_blocks`: MobileNet's and EfficientNet's
   blocks, ResNet's stages) is cut before its last ``blocks`` units.
2. **Cache**: every item's activation map entering the cut is computed once by the frozen bottom (the forward
   stops there) and stored in an HDF5 file beside the feature caches (``<cache_dir>/<dataset>/<backbone>-cut<N>-
   <key>.maps.h5``, fp16 by default; its key is the features' key plus the cut and the precision); its size is
   said before it starts. A second run with the same key reads it back.
3. **Train**: a copy of the model whose modules before the cut are identities (so it takes the cached map as its
   input) plus a new linear layer: the top blocks and the linear layer trained with AdamW and a cosine schedule,
   batch norm statistics frozen (small data), seeded; early stopping on val top-1 (the best epoch's weights kept).
   The bottom never runs again.
4. **Save**: the trained tensors in safetensors (no pickle, no code) and a card (JSON, with their sha256) beside
   it. :func:`load_finetuned` rebuilds the whole network (the pretrained backbone, the trained tensors put in,
   the linear layer on top) for ``featx predict`` and ``featx export-model``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbones.registry import Backbone, load_backbone, trunk_blocks
from ..cache.spec import EmbeddingSpec
from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write, file_sha256
from ..version import __version__

__all__ = ["FinetuneOptions", "SUFFIX", "check_safetensors", "cut_point", "cached_maps", "finetune", "load_finetuned"]

log = logging.getLogger("featx")

#: What ``featx finetune`` writes: ``<out>/finetuned.safetensors`` and ``<out>/finetuned.json``.
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class FinetuneOptions:
    """How the top is trained (defaults: conventions of fine-tuning recipes, not tuned here)."""

    blocks: int = 1
    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    patience: int = 3
    seed: int = 0
    precision: str = "fp16"


def check_safetensors() -> None:
    """One line instead of an ImportError when the ``finetune`` extra is missing."""
    import importlib.util

    if importlib.util.find_spec("safetensors") is None:
        raise FeatxError("featx finetune saves its network with safetensors, which is not installed: "
                         "pip install 'featx[finetune]'")


def cut_point(model: nn.Module, blocks: int) -> tuple[str, list[str]]:
    """The trunk unit the top starts at (its name) and the names of every module that runs before it (made
    identities in the top: the top-level children registered before the trunk, and the trunk's earlier units)."""
    units = trunk_blocks(model)
    if not units:
        raise FeatxUsageError("featx finetune: this model has no sequential trunk to cut", param="blocks")
    if not 1 <= blocks < len(units):
        raise FeatxUsageError(f"--blocks {blocks}: this model's trunk has {len(units)} units; train 1 to "
                              f"{len(units) - 1} of them", param="blocks")
    cut = units[-blocks][0]
    before = [n for n, _ in units[:-blocks]]
    for name, _ in model.named_children():  # the stem: everything registered before the trunk
        if name == cut.split(".")[0]:  # the trunk's container (features, blocks), or ResNet's stage itself
            break
        if name not in before:
            before.append(name)
    return cut, before


class _Stop(Exception):
    pass


def cached_maps(bb: Backbone, source, cut: str, path: Path, *, precision: str, batch_size: int = 32,
                device: str = "cpu") -> Path:
    """The activation map entering ``cut`` for every item of every split of ``source``, computed once by the frozen
    bottom (the forward stops at ``cut``) into ``path`` (HDF5: per split ``X`` maps, ``y`` labels, ``ids``)."""
    import h5py

    from ..extract.batches import Items, collate

    if path.is_file():
        log.info(f"reusing the cached maps {path}")
        return path
    seen: dict = {}
    module = dict(bb.model.named_modules())[cut]

    def stop(_m, inputs):
        seen["x"] = inputs[0]
        raise _Stop

    def bottom(x: torch.Tensor) -> torch.Tensor:
        """The map entering the cut: the frozen bottom's forward, stopped there."""
        try:
            with torch.inference_mode():
                bb.model(x.to(device, memory_format=torch.channels_last))
        except _Stop:
            pass
        return seen.pop("x")

    splits = source.splits()
    bb.model.to(memory_format=torch.channels_last)  # as extraction runs it: 2.5x faster on 2 CPU cores here
    handle = module.register_forward_pre_hook(stop)
    dtype = np.float16 if precision == "fp16" else np.float32
    crop = int(bb.preprocess.get("input_size", (3, 224, 224))[-1])
    shape = tuple(bottom(torch.zeros(1, 3, crop, crop)).shape[1:])
    n = sum(len(items) for items in splits.values())
    size = n * int(np.prod(shape)) * np.dtype(dtype).itemsize
    log.info(f"caching the maps entering {cut} of {n} items once: {'x'.join(map(str, shape))} {precision} each, "
             f"{size / 2**20:.0f} MB in {path}")
    try:
        with atomic_write(path, suffix=".tmp.h5") as tmp, h5py.File(tmp, "w") as f:
            for split, items in splits.items():
                loader = torch.utils.data.DataLoader(Items(source, items, 0, bb.transform), batch_size=batch_size,
                                                     collate_fn=collate)
                maps, ys, ids = [], [], []
                for x, rows, _bad in loader:
                    if x is None:
                        continue
                    maps.append(bottom(x).float().cpu().numpy().astype(dtype))
                    ys.extend(int(items.labels[j]) for j in rows)
                    ids.extend(str(items.ids[j]) for j in rows)
                if maps:
                    g = f.create_group(split)
                    g.create_dataset("X", data=np.concatenate(maps))
                    g.create_dataset("y", data=np.asarray(ys, dtype=np.int64))
                    g.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
            f.attrs["cut"] = cut
            f.attrs["classes"] = json.dumps(list(source.classes))
    finally:
        handle.remove()
    return path


def _top(model: nn.Module, before: list[str], n_classes: int, dim: int) -> nn.Module:
    """A copy of ``model`` that starts at the cut (modules in ``before`` are identities) with a new linear layer."""
    top = copy.deepcopy(model)
    for name in before:
        parent, _, child = name.rpartition(".")
        setattr(top.get_submodule(parent) if parent else top, child, nn.Identity())
    return nn.Sequential(top, nn.Linear(dim, n_classes))


def _freeze_bn(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


def _accuracy(net, X: torch.Tensor, y: torch.Tensor, device: str = "cpu", batch: int = 256) -> float:
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            pred = net(X[i:i + batch].float().to(device)).argmax(1).cpu()
            correct += int((pred == y[i:i + batch]).sum())
    return correct / max(len(X), 1)


def finetune(bb: Backbone, source, out: Path, *, options: FinetuneOptions = FinetuneOptions(),
             cache_dir="cache", device: str = "cpu", progress=None) -> dict:
    """Cut, cache, train, save (the module docstring); returns the card."""
    import h5py

    from ..extract.plan import spec_for

    check_safetensors()
    from safetensors.torch import save_file

    t_all = time.perf_counter()
    torch.manual_seed(options.seed)
    cut, before = cut_point(bb.model, options.blocks)
    spec = spec_for(source, bb)
    key = hashlib.sha256(f"{spec.key(source.fingerprint())}|{cut}|{options.precision}".encode()).hexdigest()[:16]
    maps_path = Path(cache_dir) / source.name / f"{bb.name}-cut{options.blocks}-{key}.maps.h5"
    maps_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cached_maps(bb, source, cut, maps_path, precision=options.precision, device=device)
    cache_s = time.perf_counter() - t0
    with h5py.File(maps_path, "r") as f:
        data = {s: (torch.from_numpy(f[s]["X"][:]), torch.from_numpy(f[s]["y"][:])) for s in f}
    if "train" not in data:
        raise FeatxError("finetune needs a train split")
    labelled = {s: (X[y >= 0], y[y >= 0]) for s, (X, y) in data.items()}
    n_classes = len(source.classes)
    net = _top(bb.model, before, n_classes, bb.feature_dim).to(device).requires_grad_(True)
    _freeze_bn(net)
    Xtr, ytr = labelled["train"]
    val = labelled.get("val")
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=options.lr,
                            weight_decay=options.weight_decay)
    steps = options.epochs * max(1, -(-len(Xtr) // options.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best, best_state, waited, history = -1.0, None, 0, []
    gen = torch.Generator().manual_seed(options.seed)
    t0 = time.perf_counter()
    for epoch in range(options.epochs):
        net.train()
        _freeze_bn(net)
        order = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(Xtr), options.batch_size):
            idx = order[i:i + options.batch_size]
            loss = nn.functional.cross_entropy(net(Xtr[idx].float().to(device)), ytr[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        score = (_accuracy(net, *val, device) if val is not None and len(val[1]) else
                 _accuracy(net, Xtr, ytr, device))
        history.append(round(score, 4))
        if progress:
            progress(epoch + 1, options.epochs, "fine-tuning")
        if score > best:
            best, best_state, waited = score, copy.deepcopy(net.state_dict()), 0
        else:
            waited += 1
            if waited >= options.patience:
                break
    train_s = time.perf_counter() - t0
    net.load_state_dict(best_state)
    metrics = {s: {"n": int(len(y)), "top1": round(_accuracy(net, X, y, device), 4)}
               for s, (X, y) in labelled.items() if s != "train" and len(y)}
    tensors = _top_tensors(net)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"finetuned{SUFFIX}"
    with atomic_write(weights, suffix=f".tmp{SUFFIX}") as tmp:
        save_file(tensors, str(tmp))
    card = {"kind": "finetuned", "embedding": spec.to_attrs(), "blocks": options.blocks, "cut": cut,
            "frozen": before, "classes": list(source.classes), "options": asdict(options), "metrics": metrics,
            "val_history": history, "maps": str(maps_path), "maps_key": key,
            "seconds": {"cache": round(cache_s, 1), "train": round(train_s, 1),
                        "total": round(time.perf_counter() - t_all, 1)},
            "weights_sha256": file_sha256(weights), "featx_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with atomic_write(weights.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


def _top_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors: every parameter and buffer of the top (the frozen bottom is identities there: it has
    none), named as in the whole model (``model.*``) and ``fc.*`` for the new linear layer, contiguous, on the CPU."""
    return {("model." if name.startswith("0.") else "fc.") + name[2:]: t.detach().cpu().contiguous()
            for name, t in net.state_dict().items()}


def load_finetuned(path, *, device: str = "cpu") -> tuple[nn.Module, dict, Backbone]:
    """The whole fine-tuned network (preprocessed images -> class scores), its card and its backbone; refused in
    one line when the card is missing, the tensors were changed after saving, or they do not fit the backbone."""
    check_safetensors()
    from safetensors.torch import load_file

    path = Path(path)
    card_file = path.with_suffix(".json")
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatxUsageError(f"{path}: its card {card_file.name} cannot be read ({exc}); run featx finetune again")
    if file_sha256(path) != card.get("weights_sha256"):
        raise FeatxError(f"{path} does not match its card (sha256): it was changed after `featx finetune`")
    spec = EmbeddingSpec.from_attrs(card["embedding"])
    bb = load_backbone(spec.backbone, spec.weights, device=device, layer=spec.layer)
    tensors = load_file(str(path))
    fc_w, fc_b = tensors.get("fc.weight"), tensors.get("fc.bias")
    if fc_w is None or fc_b is None or fc_w.shape != (len(card["classes"]), bb.feature_dim):
        raise FeatxError(f"{path}: its linear layer does not fit {spec.backbone} ({bb.feature_dim}-d) and "
                         f"{len(card['classes'])} classes")
    model = copy.deepcopy(bb.model)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise FeatxError(f"{path}: tensor {wrong[0]} is not part of {spec.backbone}")
    model.load_state_dict(state, strict=False)
    fc = nn.Linear(bb.feature_dim, len(card["classes"]))
    fc.load_state_dict({"weight": fc_w, "bias": fc_b})
    return nn.Sequential(model, fc).eval().to(device), card, bb
