"""The host side of extraction, proven before a GPU is lent: featx's feeder against a plain
``DataLoader(num_workers=cores)`` with the same decode and preprocessing, side by side in one run.

The backbone costs almost nothing (global average pooling of the preprocessed batch), so both sides measure how
fast they turn JPEG files into batches: featx end to end (``featx.extract``: its own pipeline choice, HDF5 writes
included) and the reference loop a user would write (torchvision's ``ImageFolder`` with the weights' transform,
``DataLoader(batch_size, num_workers=cores)``, the same model). Each side runs ``--rounds`` times, alternating; the
best round of each is compared (the machine's other load only slows a round down).

Usage: python bench/bench_feeder.py [--images 2048] [--size 500x375] [--rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import make_photos  # noqa: E402

from featx.backbones import load_backbone  # noqa: E402
from featx.data.balance import usable_cores  # noqa: E402
from featx.data.files import ImageFolderSource  # noqa: E402
from featx.extract import extract  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def cheap_backbone(device: str):
    """MobileNetV2's transform with a model that only pools: the forward costs ~nothing."""
    bb = load_backbone("mobilenet_v2", "none", device=device)
    return dataclasses.replace(bb, model=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).to(device),
                               feature_dim=3, name="pool-only")


def featx_rate(folder: Path, bb, batch: int, device: str, tmp: Path, round_: int) -> tuple[float, str]:
    source = ImageFolderSource(folder, val_fraction=0, test_fraction=0)
    t0 = time.perf_counter()
    result = extract(source, bb, out=tmp / f"featx-{round_}.h5", batch_size=batch, device=device, progress=False,
                     reuse="none")
    return result.n_new / (time.perf_counter() - t0), result.pipeline


def dataloader_rate(folder: Path, bb, batch: int, device: str, workers: int) -> float:
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(folder), transform=bb.transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=device != "cpu")
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for x, _ in loader:
            bb.model(x.to(device, non_blocking=True)).cpu()
            n += len(x)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--distinct", type=int, default=256, help="distinct photos (the rest are links to them)")
    p.add_argument("--size", default="500x375", help="WxH of the JPEGs (4032x3024: camera photos)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("bench/results/feeder.json"))
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    folder = make_photos(DATA / f"feeder-{w}x{h}-{args.images}", args.images, size=(w, h), distinct=args.distinct)
    cores = usable_cores()
    bb = cheap_backbone(args.device)
    featx, ref, pipeline = [], [], ""
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rate, pipeline = featx_rate(folder, bb, args.batch, args.device, Path(tmp), r)
            featx.append(rate)
            ref.append(dataloader_rate(folder, bb, args.batch, args.device, cores))
            print(f"round {r + 1}: featx {featx[-1]:.1f} images/s, DataLoader(num_workers={cores}) {ref[-1]:.1f}",
                  file=sys.stderr)
    record = {"images": args.images, "size": args.size, "cores": cores, "batch": args.batch, "device": args.device,
              "featx_images_per_s": round(max(featx), 1), "dataloader_images_per_s": round(max(ref), 1),
              "featx_over_dataloader": round(max(featx) / max(ref), 3), "featx_pipeline": pipeline,
              "rounds": {"featx": [round(v, 1) for v in featx], "dataloader": [round(v, 1) for v in ref]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("| images | size | cores | featx img/s | DataLoader img/s | featx / DataLoader | featx pipeline |")
    print("|---:|---|---:|---:|---:|---:|---|")
    print(f"| {args.images} | {args.size} | {cores} | {record['featx_images_per_s']} | "
          f"{record['dataloader_images_per_s']} | {record['featx_over_dataloader']:.2f} | {pipeline} |")
    return record


if __name__ == "__main__":
    main()
