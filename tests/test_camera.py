"""Camera photos: the scaled JPEG decoder (close to the exact path, recorded, opt-in) and the hint that
an exact run over camera-sized JPEGs prints."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from featx import open_features
from featx.backbones import load_backbone
from featx.data.decoding import decode_scaled, scaled_size
from featx.data.files import ImageFolderSource
from featx.extract import extract

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from photos import make_photos  # noqa: E402  (the benchmark's generator, small)

NO_SPLIT = {"val_fraction": 0.0, "test_fraction": 0.0}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """6 real-content JPEGs of 1600x1200 (short side >= 4x MobileNetV2's resize target of 256)."""
    return make_photos(tmp_path_factory.mktemp("photos") / "cam", 6, size=(1600, 1200), seed=1)


@pytest.fixture(scope="module")
def mobilenet():
    return load_backbone("mobilenet_v2", "IMAGENET1K_V1")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_scaled_size_keeps_the_short_side():
    assert scaled_size((4032, 3024), 512) == (683, 512)
    assert scaled_size((3024, 4032), 512) == (512, 683)
    assert scaled_size((400, 300), 512) == (400, 300)  # never asks for more than the file has


def test_scaled_decoding_is_close_recorded_and_opt_in(photos, mobilenet, tmp_path):
    exact = extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "exact.h5", progress=False)
    fast = extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "fast.h5", progress=False,
                   decoder="scaled")
    a, b = open_features(exact.path), open_features(fast.path)
    assert list(a["train"].ids) == list(b["train"].ids)
    cos = _cosines(a["train"].X, b["train"].X)
    assert cos.min() >= 0.999, cos
    assert not np.array_equal(a["train"].X, b["train"].X), "the scaled path really decoded at a smaller scale"
    assert (a.meta["decoder"], b.meta["decoder"]) == ("pil", "scaled")
    assert a.cache_key != b.cache_key


def test_scaled_decoder_leaves_small_and_non_jpeg_files_to_the_exact_path(image_folder, photos, tiny_backbone,
                                                                          tmp_path):
    png = tmp_path / "big.png"
    from PIL import Image

    Image.open(next(photos.rglob("*.jpg"))).save(png)
    assert decode_scaled(png, min_side=512) is None
    assert decode_scaled(next(image_folder.rglob("*.jpg")), min_side=512) is None  # 48x48: nothing to gain
    exact = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "e.h5", progress=False)
    fast = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "f.h5", progress=False,
                   decoder="scaled")
    np.testing.assert_array_equal(open_features(exact.path)["train"].X, open_features(fast.path)["train"].X)


def test_an_exact_run_over_camera_photos_says_how_much_faster_scaled_would_be(photos, mobilenet, tmp_path, caplog):
    with caplog.at_level("INFO", logger="featx"):
        extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "e.h5", progress=False)
    hints = [r.getMessage() for r in caplog.records if "--decoder scaled" in r.getMessage()]
    assert len(hints) == 1 and "6 of 6 sampled images" in hints[0] and "x faster (measured on 3:" in hints[0], hints
    caplog.clear()
    with caplog.at_level("INFO", logger="featx"):
        extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "s.h5", progress=False,
                decoder="scaled")
    assert not [r for r in caplog.records if "--decoder scaled" in r.getMessage()], "no hint once it is used"


def test_no_hint_for_small_images(image_folder, tiny_backbone, tmp_path, caplog):
    with caplog.at_level("INFO", logger="featx"):
        extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "e.h5", progress=False)
    assert not [r for r in caplog.records if "--decoder scaled" in r.getMessage()]


# -- the balanced pipeline --------------------------------------------------------------------------------


def test_balance_gives_cores_to_decoding_only_when_it_costs():
    from featx.data.balance import choose

    assert choose(4.3, 38.2, cores=2).decode_threads == 0  # ImageNet-sized JPEGs, MobileNetV2: as before
    assert choose(1.0, 25.0, cores=2).decode_threads == 0  # Fashion-MNIST in memory
    camera = choose(115.0, 26.0, cores=2)  # 12 MP photos, MobileNetV2: every core decodes
    assert (camera.decode_threads, camera.torch_threads) == (2, 2)
    assert choose(49.0, 130.0, cores=2).decode_threads == 1  # scaled photos, ResNet-50
    assert choose(50.0, 10.0, cores=16).decode_threads == 14
    assert "2 decoding threads, 2 torch threads" in camera.describe()
    # On a GPU the host only decodes: every core does, even for small images (an H200's 16 cores were fed
    # by one DataLoader worker per batch before: 7 camera photos/s against a decode limit of 124).
    assert choose(5.5, 12.0, cores=16, accelerator=True).decode_threads == 16


def test_threaded_batches_keep_the_order():
    from featx.data.balance import threaded_batches

    got = list(threaded_batches(lambda i: i, 23, 5, 3, list))
    assert got == [list(range(s, min(s + 5, 23))) for s in range(0, 23, 5)]


def test_a_measured_pipeline_decodes_in_threads_and_writes_the_same_cache(photos, mobilenet, tmp_path, monkeypatch,
                                                                          caplog):
    import featx.extract.batches

    plain = extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "plain.h5", batch_size=4,
                    progress=False, workers=0)
    assert plain.pipeline == "", "--workers given: no measuring"
    monkeypatch.setattr(featx.extract.batches, "BALANCE_MIN_IMAGES", 4)
    with caplog.at_level("INFO", logger="featx"):
        balanced = extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "b.h5", batch_size=4,
                           progress=False, reuse="none")  # embedded, not copied from plain.h5 beside it
    assert "decoding thread" in balanced.pipeline and "core-ms per image" in balanced.pipeline
    assert any(r.getMessage().startswith("pipeline: decode") for r in caplog.records)
    a, b = open_features(plain.path)["train"], open_features(balanced.path)["train"]
    assert list(a.ids) == list(b.ids)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5)


# -- the device data path (runs on the CPU here; CUDA tests are marked and skipped without CUDA) -----------


def test_device_path_on_the_cpu_is_close_to_the_exact_path_and_recorded(photos, mobilenet, tmp_path):
    exact = extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "exact.h5", progress=False)
    dev = extract(ImageFolderSource(photos, **NO_SPLIT), mobilenet, out=tmp_path / "dev.h5", progress=False,
                  decoder="device", batch_size=4)
    a, b = open_features(exact.path), open_features(dev.path)
    assert list(a["train"].ids) == list(b["train"].ids)
    cos = _cosines(a["train"].X, b["train"].X)
    assert cos.min() >= 0.999, cos
    assert b.meta["decoder"] == "device" and a.cache_key != b.cache_key


def test_device_path_handles_exif_png_grayscale_and_broken_files(tmp_path, mobilenet):
    from PIL import Image

    from featx.data.device import orient

    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed" / "a"
    folder.mkdir(parents=True)
    base = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        base.save(folder / f"exif{orientation}.jpg", exif=exif, quality=95)
    base.convert("L").save(folder / "gray.jpg", quality=95)
    base.save(folder / "p.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # refused at the header
    whole = (folder / "exif1.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # a good header: fails the batch decode
    exact = extract(ImageFolderSource(folder.parent, **NO_SPLIT), mobilenet, out=tmp_path / "e.h5", progress=False)
    dev = extract(ImageFolderSource(folder.parent, **NO_SPLIT), mobilenet, out=tmp_path / "d.h5", progress=False,
                  decoder="device", batch_size=8)
    a, b = open_features(exact.path)["train"], open_features(dev.path)["train"]
    assert list(a.ids) == list(b.ids) and "a/broken.jpg" not in list(b.ids)
    assert {s["id"] for s in b.skipped} == {s["id"] for s in a.skipped} == {"a/broken.jpg", "a/truncated.jpg"}
    assert _cosines(a.X, b.X).min() >= 0.999  # rotated, grayscale and PNG images all come out as the exact path's
    t = torch_arange_image()
    for o in range(1, 9):  # each EXIF orientation as PIL applies it
        from PIL import ImageOps

        img = Image.fromarray(t.permute(1, 2, 0).numpy())
        exif = img.getexif()
        exif[0x0112] = o
        img.info["exif"] = exif.tobytes()
        pil = np.asarray(ImageOps.exif_transpose(img)).transpose(2, 0, 1)
        np.testing.assert_array_equal(orient(t, o).numpy(), pil, err_msg=f"orientation {o}")


def torch_arange_image():
    import torch

    return torch.arange(3 * 5 * 7, dtype=torch.uint8).reshape(3, 5, 7)


@pytest.mark.cuda
def test_device_path_on_cuda_is_close_to_the_exact_path(photos, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    bb = load_backbone("mobilenet_v2", "IMAGENET1K_V1", device="cuda")
    exact = extract(ImageFolderSource(photos, **NO_SPLIT), bb, out=tmp_path / "e.h5", progress=False, device="cuda")
    dev = extract(ImageFolderSource(photos, **NO_SPLIT), bb, out=tmp_path / "d.h5", progress=False, device="cuda",
                  decoder="device")
    cos = _cosines(open_features(exact.path)["train"].X, open_features(dev.path)["train"].X)
    assert cos.min() >= 0.999, cos
