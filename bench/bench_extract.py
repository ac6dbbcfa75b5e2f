"""Extraction efficiency: featx end to end on real JPEG files vs the bare forward pass.

For each backbone, the same model, precision, memory format and batch size run twice, side by side:
  bare  - ``model(x)`` on pre-made, already preprocessed tensors (the compute limit);
  featx - ``featx.extract`` on JPEG files: decode, resize, crop, normalise, forward, write HDF5.
The ratio featx / bare is the number that matters (absolute images/s depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featx.backbones import load_backbone
from featx.extract import extract
from featx.data.files import ImageFolderSource


def make_jpegs(root: Path, n: int, size: int = 320, seed: int = 0) -> Path:
    """``n`` photo-sized JPEGs (smooth random colour fields with detail), in 4 class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.integers(0, 255, (size // 16, size // 16, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        noise = rng.integers(-20, 20, (size, size, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bare_forward(bb, n: int, batch: int, device: torch.device, channels_last: bool, precision: str = "fp32") -> float:
    """images/s of the model alone on preprocessed tensors already on the device."""
    from featx.options import PRECISIONS

    x = torch.randn(batch, 3, *bb.preprocess["input_size"][1:], device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = PRECISIONS[precision].autocast
    with torch.inference_mode(), torch.autocast(device.type, dtype=getattr(torch, autocast) if autocast else None,
                                                enabled=autocast is not None):
        bb.model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(max(1, n // batch)):
            bb.model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return max(1, n // batch) * batch / (time.perf_counter() - t0)


def run(backbones, n: int, batch: int, device: str) -> list[dict]:
    dev = torch.device(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_jpegs(Path(tmp) / "jpegs", n)
        for name in backbones:
            bb = load_backbone(name, "none", device=dev)
            bb.model.to(memory_format=torch.channels_last)
            source = ImageFolderSource(folder, val_fraction=0, test_fraction=0)
            # warm-up run on a few images so both sides start warm
            extract(ImageFolderSource(folder, val_fraction=0, test_fraction=0, limit=batch), bb,
                    out=Path(tmp) / f"warm-{name}.h5", batch_size=batch, device=device, progress=False)
            for decoder in ("pil", "torchvision"):
                result = extract(source, bb, out=Path(tmp) / f"{name}-{decoder}.h5", batch_size=batch,
                                 device=device, progress=False, decoder=decoder)
                bare = bare_forward(bb, n, batch, dev, channels_last=True)  # right after, on the same machine state
                rows.append({"backbone": name, "decoder": decoder, "images": n, "batch": batch, "device": device,
                             "precision": "fp32", "featx_images_per_s": round(result.images_per_s, 1),
                             "bare_images_per_s": round(bare, 1), "ratio": round(result.images_per_s / bare, 3)})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="mobilenet_v2,resnet50")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("bench/results/extract.json"))
    args = p.parse_args(argv)
    rows = run(args.backbones.split(","), args.images, args.batch, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| backbone | decoder | device | batch | images | featx images/s | bare forward images/s | featx / bare |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['decoder']} | {r['device']} | {r['batch']} | {r['images']} | "
              f"{r['featx_images_per_s']} | {r['bare_images_per_s']} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
