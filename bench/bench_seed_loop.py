"""The seed's hand-written loop vs featx, on the same images, backbone, weights, transforms and split.

seed  - frozen MobileNetV2 (IMAGENET1K_V1) with a new fc layer trained with Adam (lr 1e-3) for E epochs;
        the frozen backbone runs over every training image in every epoch (what the seed's example does).
featx - extract once into an HDF5 cache, then fit the torch-linear head (Adam-family, lr 1e-3, E epochs).

Images are real Fashion-MNIST images written as JPEG files in an ImageFolder tree, train:test = 6:1 as in
Fashion-MNIST. Expected ratio ~ (E * n_train + n_test) / (n_train + n_test) when the backbone dominates:
it grows linearly with the number of epochs.
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
import torchvision
from torch.utils.data import DataLoader

from featx.backbones import load_backbone
from featx.data.decoding import RGBTransform
from featx.probe.evaluate import evaluate
from featx.extract import extract
from featx.heads.registry import make_head
from featx.data.files import ImageFolderSource
from featx.data.layout import make_source
from featx.cache.store import open_features


def write_images(root: Path, n_train: int, n_test: int) -> Path:
    src = make_source("torchvision:FashionMNIST", root="cache/datasets")
    splits = src.splits()
    for split, n in (("train", n_train), ("test", n_test)):
        items = splits[split]
        for i in range(n):
            label = src.classes[items.labels[i]].replace("/", "-")
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            src.open(items.keys[i]).save(folder / f"{i:05d}.jpg", quality=95)
    return root


def seed_loop(root: Path, epochs: int, batch: int) -> tuple[float, float]:
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    preprocess = RGBTransform(weights.transforms())
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=preprocess)
    test = torchvision.datasets.ImageFolder(str(root / "test"), transform=preprocess)
    t0 = time.perf_counter()
    model = torchvision.models.mobilenet_v2(weights=weights)
    for p in model.parameters():
        p.requires_grad = False
    model.classifier[1] = torch.nn.Linear(1280, len(train.classes))
    opt = torch.optim.Adam(model.classifier[1].parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.eval()  # a frozen backbone: BatchNorm statistics stay as trained (train() would change them)
    for _ in range(epochs):
        for x, y in DataLoader(train, batch_size=batch, shuffle=True, generator=gen):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=batch):
            correct += (model(x).argmax(1) == y).sum().item()
    return time.perf_counter() - t0, correct / len(test)


def featx_way(root: Path, epochs: int, batch: int, cache: Path) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    bb = load_backbone("mobilenet_v2", "IMAGENET1K_V1")
    result = extract(ImageFolderSource(root, val_fraction=0), bb, out=cache, batch_size=batch, progress=False)
    t_extract = time.perf_counter() - t0
    fs = open_features(result.path)
    head = make_head("torch-linear", {"epochs": epochs, "lr": 1e-3, "batch_size": batch, "weight_decay": 0.0})
    head.fit(fs["train"].X, fs["train"].y)
    acc = evaluate(head, fs["test"].X, fs["test"].y)["top1"]
    return time.perf_counter() - t0, t_extract, acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=360)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("bench/results/seed_loop.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp) / "fmnist", args.train, args.test)
        f_total, f_extract, f_acc = featx_way(root, args.epochs, args.batch, Path(tmp) / "c.h5")
        s_total, s_acc = seed_loop(root, args.epochs, args.batch)
    row = {"train_images": args.train, "test_images": args.test, "epochs": args.epochs, "batch": args.batch,
           "seed_seconds": round(s_total, 1), "seed_test_top1": round(s_acc, 4),
           "featx_seconds": round(f_total, 1), "featx_extract_seconds": round(f_extract, 1),
           "featx_test_top1": round(f_acc, 4), "speedup": round(s_total / f_total, 2),
           "expected_speedup_backbone_bound": round((args.epochs * args.train + args.test) / (args.train + args.test), 2)}
    print(json.dumps(row), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")
    print("| epochs | train / test images | seed loop s | seed top-1 | featx s (extract) | featx top-1 | speed-up |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {row['epochs']} | {args.train} / {args.test} | {row['seed_seconds']} | {row['seed_test_top1']:.3f} | "
          f"{row['featx_seconds']} ({row['featx_extract_seconds']}) | {row['featx_test_top1']:.3f} | "
          f"{row['speedup']:.1f}x |")


if __name__ == "__main__":
    main()
