"""Camera photos: featx end to end against the machine's limit for this data, side by side in one run.

Data (made once into bench/data/, git-ignored; bench/photos.py): 12 MP JPEGs (4032x3024, quality 92,
~3.5 MB, real photo content with camera-like detail) and ImageNet-sized JPEGs (500x375) of the same content.

For each data set, backbone (random-init weights: the timing is the same) and decoder:
  featx  - ``featx.extract`` end to end (decode, preprocess, forward, HDF5), images/s;
  bare   - the forward pass alone on pre-made tensors with every core, images/s;
  d      - decode + preprocess cost, core-ms per image (one thread, measured on the files);
  f      - forward cost, core-ms per image (= 1000 * cores / bare);
  limit  - what this machine can do for this data if every core is busy all the time,
           1000 * cores / (d + f) images/s.
featx / limit is the number that matters: how much of the machine featx uses. With ``--decoder device`` on a GPU,
limit is the device's own: nvJPEG decode + preprocess of whole batches (measured alone) and the forward, one after
the other on the one GPU.

Steady state (``bench/gpu.sh``): thousands of files per row (``--distinct`` photos made, the rest copies of them),
``--pairs`` instead of every backbone x precision, and each row's warm-up run (one batch, model and decoder
start-up) timed and reported apart from the measured run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import bare_forward  # noqa: E402
from photos import make_photos  # noqa: E402

from featx.backbones import load_backbone  # noqa: E402
from featx.data.balance import usable_cores  # noqa: E402
from featx.data.decoding import image_input  # noqa: E402
from featx.data.files import ImageFolderSource  # noqa: E402
from featx.data.layout import make_source  # noqa: E402
from featx.extract import extract  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
SETS = {"camera 12 MP": ("camera12mp", (4032, 3024)), "ImageNet-sized": ("imagenet500", (500, 375)),
        "Fashion-MNIST (in memory)": ("torchvision:FashionMNIST", None)}


def decode_cost(files, bb, decoder: str, n: int = 12, open_pil=None) -> float:
    """Core-ms per image of decode + preprocess (one thread, as one decoding thread runs it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    kwargs = {"open_pil": open_pil} if open_pil else {}
    try:
        image_input(files[0], bb.transform, decoder, **kwargs)  # warm
        t0 = time.perf_counter()
        for p in files[:n]:
            image_input(p, bb.transform, decoder, **kwargs)
        return (time.perf_counter() - t0) / len(files[:n]) * 1000
    finally:
        torch.set_num_threads(threads)


def device_decode_rate(files, bb, device: str, batch: int, batches: int = 4) -> float:
    """Images/s of the device path alone: raw files (read on the host) decoded and preprocessed on ``device`` in
    batches (one warm-up batch first)."""
    from featx.data.decoding import to_rgb, open_image
    from featx.data.device import preprocess_batch, read_raw

    dev = torch.device(device)
    chunks = [files[i:i + batch] for i in range(0, min(len(files), batch * (batches + 1)), batch)]
    raws = [[read_raw(p, to_rgb, open_image) for p in chunk] for chunk in chunks]
    preprocess_batch(raws[0], bb.transform.inner, dev)
    torch.cuda.synchronize(dev) if dev.type == "cuda" else None
    t0 = time.perf_counter()
    n = 0
    for chunk in raws[1:]:
        preprocess_batch(chunk, bb.transform.inner, dev)
        n += len(chunk)
    torch.cuda.synchronize(dev) if dev.type == "cuda" else None
    return n / max(time.perf_counter() - t0, 1e-9)


def run(backbones, decoders, sets, n_camera: int, n_small: int, batch: int, workers: int | None,
        device: str = "cpu", precisions=("fp32",), pairs=None, distinct: int = 0,
        encoding: str = "default") -> list[dict]:
    """``pairs``: (backbone, precision) pairs to measure (default: every backbone x precision)."""
    cores = usable_cores()
    rows = []
    pairs = pairs or [(b, p) for b in backbones for p in precisions]
    with tempfile.TemporaryDirectory() as tmp:
        for label in sets:
            folder_name, size = SETS[label]
            if size is None:  # the default pipeline's data: decoded in memory, no file decoder
                source = lambda limit=0: make_source(folder_name, limit=limit or n_small)  # noqa: E731
                src = source()
                files = [k for k in src.splits()["train"].keys]
                set_decoders = ["pil"]
            else:
                n = n_camera if size[0] > 1000 else n_small
                folder = make_photos(DATA / (f"{folder_name}-{n}" + (f"-{distinct}" if distinct else "")
                                             + (f"-{encoding}" if encoding != "default" else "")), n, size=size,
                                     distinct=distinct, encoding=encoding)
                files = sorted(str(p) for p in folder.rglob("*.jpg"))
                source = lambda limit=0, folder=folder: ImageFolderSource(  # noqa: E731
                    folder, val_fraction=0, test_fraction=0, limit=limit)
                set_decoders = decoders
                src = None
            for name, precision in pairs:
                bb = load_backbone(name, "none", device=device)
                bb.model.to(memory_format=torch.channels_last)
                common = {"batch_size": batch, "device": device, "precision": precision, "progress": False, "reuse": "none",
                          **({"workers": workers} if workers is not None else {})}
                t_warm = time.perf_counter()
                extract(source(batch), bb, out=Path(tmp) / f"warm-{name}-{len(rows)}.h5", **common)  # warm-up
                warm_s = time.perf_counter() - t_warm
                bare = bare_forward(bb, 8 * batch, batch, torch.device(device), channels_last=True,
                                    precision=precision)
                f = 1000 * cores / bare
                for decoder in set_decoders:
                    if decoder == "device" and src is not None and device == "cpu":
                        continue
                    d = decode_cost(files, bb, decoder, open_pil=src.open if src is not None else None)
                    t0 = time.perf_counter()
                    result = extract(source(), bb, out=Path(tmp) / f"{name}-{len(rows)}-{decoder}.h5", decoder=decoder,
                                     **common)
                    featx_ips = result.n_new / (time.perf_counter() - t0)  # wall, HDF5 open/close included
                    limit = 1000 * cores / (d + f)
                    if decoder == "device" and device != "cpu":  # the device's own limit: decode, then forward
                        dec = device_decode_rate(files, bb, device, batch)
                        limit = 1 / (1 / dec + 1 / bare)
                    rows.append({"data": label + (f" ({encoding})" if encoding != "default" and size else ""),
                                 "backbone": name, "decoder": decoder, "images": result.n_new,
                                 "warmup_s": round(warm_s, 2), "limit_kind": "device" if decoder == "device" and
                                 device != "cpu" else "host",
                                 "device": device, "precision": precision,
                                 "cores": cores, "batch": batch, "featx_images_per_s": round(featx_ips, 1),
                                 "bare_images_per_s": round(bare, 1), "decode_core_ms": round(d, 1),
                                 "forward_core_ms": round(f, 1), "limit_images_per_s": round(limit, 1),
                                 "featx_over_limit": round(featx_ips / limit, 3),
                                 "featx_over_bare": round(featx_ips / bare, 3), "pipeline": result.pipeline,
                                 "write_share": round(result.write_seconds / max(result.seconds, 1e-9), 4)})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="mobilenet_v2,resnet50")
    p.add_argument("--decoders", default="pil,scaled,torchvision")
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    p.add_argument("--camera-images", type=int, default=96)
    p.add_argument("--small-images", type=int, default=192,
                   help="ImageNet-sized JPEGs, and Fashion-MNIST items per split")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: featx's own choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU, limit is the host's decode limit)")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32,bf16")
    p.add_argument("--pairs", default=None, help="backbone:precision pairs instead of every backbone x precision, "
                   "e.g. resnet50:bf16,mobilenet_v2:fp32")
    p.add_argument("--distinct", type=int, default=0, help="distinct photos per set (the rest copies; 0 = all)")
    p.add_argument("--encoding", default="default", help="JPEG encoding of the photo sets (bench/photos.py ENCODINGS: "
                   "default, progressive, q75-420, q97-444, exif-rotated)")
    p.add_argument("--out", type=Path, default=Path("bench/results/camera.json"))
    args = p.parse_args(argv)
    pairs = [tuple(x.split(":")) for x in args.pairs.split(",")] if args.pairs else None
    rows = run(args.backbones.split(","), args.decoders.split(","), args.sets.split(","), args.camera_images,
               args.small_images, args.batch, args.workers, args.device, args.precisions.split(","), pairs,
               args.distinct, args.encoding)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| data | backbone | device | precision | decoder | images | warm-up s | featx img/s | bare img/s "
          "| d (core-ms) | f (core-ms) | limit img/s | featx / limit | featx / bare | pipeline |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['data']} | {r['backbone']} | {r['device']} | {r['precision']} | {r['decoder']} | {r['images']} | "
              f"{r['warmup_s']} | {r['featx_images_per_s']} | "
              f"{r['bare_images_per_s']} | {r['decode_core_ms']} | {r['forward_core_ms']} | "
              f"{r['limit_images_per_s']} ({r['limit_kind']}) | {r['featx_over_limit']:.2f} | "
              f"{r['featx_over_bare']:.2f} | {r['pipeline']} |")


if __name__ == "__main__":
    main()
