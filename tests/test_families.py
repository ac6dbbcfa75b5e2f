"""Backbone families beyond torchvision (issue 27): timm done right (embedding size off a forward, timm's own data
config, ViT pooling), OpenCLIP image towers with their text tower kept for a zero-shot head, and weights from local
files -- all offline, with random init or a tiny OpenCLIP configuration."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_folder
from featx import open_features
from featx.backbones.registry import load_backbone
from featx.cli import main
from featx.errors import FeatxError, FeatxUsageError

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
needs_clip = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip_torch not installed")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def embed(bb, images) -> np.ndarray:
    with torch.inference_mode():
        return bb.model(torch.stack([bb.transform(im) for im in images])).numpy()


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_images
    from PIL import Image

    return [Image.fromarray(im).resize((160, 120)) for im in load_sample_images().images]


# -- timm -------------------------------------------------------------------------------------------------------
def _timm_archs() -> list[str]:
    from featx.backbones.names import SUGGESTED

    # every timm backbone featx lists (their architectures), the one the old code got wrong, and a tiny ViT
    return sorted({n.removeprefix("timm:").split(".")[0] for n, _, _ in SUGGESTED if n.startswith("timm:")}
                  | {"mobilenetv3_large_100", "vit_tiny_patch16_224", "tf_efficientnet_lite0"})


@needs_timm
@pytest.mark.parametrize("arch", _timm_archs())
def test_the_declared_embedding_size_is_what_a_forward_returns(arch):
    import timm

    from featx.backbones.timm_models import data_config, declared_dim, pooled_dim

    model = timm.create_model(arch, pretrained=False)
    model.reset_classifier(0)
    size = int(data_config(model)["input_size"][-1])
    assert declared_dim(model) == pooled_dim(model.eval(), size)


@needs_timm
def test_mobilenetv3_extracts_and_fits_with_its_real_width(tmp_path):
    """timm's num_features is 960 for MobileNetV3-Large, the pooled pre-logits 1280: the cache must hold 1280."""
    data = make_folder(tmp_path / "data", per_class=6)
    cache = tmp_path / "c.h5"
    out = run("extract", "--data", data, "--backbone", "timm:mobilenetv3_large_100", "--weights", "none", "--out", cache)
    assert out.exit_code == 0, out.output
    assert open_features(cache).feature_dim == 1280
    fitted = run("fit", cache, "--head", "logreg", "--no-baselines", "--out", tmp_path / "h.skops")
    assert fitted.exit_code == 0, fitted.output


@needs_timm
@pytest.mark.parametrize("arch", ["resnet50.a1_in1k", "vit_base_patch16_siglip_224.webli"])
def test_timm_preprocessing_equals_timms_own_transform(arch, photos):
    """The exact path: featx's transform = ``create_transform(**resolve_model_data_config(model))`` on real photos,
    for a centre-crop config (crop_pct 0.95, bicubic) and a squash one (SigLIP)."""
    import timm
    from timm.data import create_transform

    from featx.backbones.timm_models import _preset, data_config
    from featx.data.decoding import RGBTransform

    model = timm.create_model(arch, pretrained=False)
    cfg = data_config(model)
    ours, theirs = RGBTransform(_preset(cfg)), create_transform(**cfg)
    for im in photos:
        torch.testing.assert_close(ours(im), theirs(im), atol=1e-6, rtol=0)


@needs_timm
def test_vit_pooling_choices_are_recorded_and_keyed(photos):
    """DINOv2's architecture (random init): cls, mean of the patch tokens, and both concatenated; each a key."""
    from featx.cache.spec import EmbeddingSpec

    arch = "timm:vit_small_patch14_reg4_dinov2"
    bbs = {p: load_backbone(arch, "none", pooling=p) for p in ("cls", "mean", "cls+mean")}
    feats = {p: embed(bb, photos[:1]) for p, bb in bbs.items()}
    assert {p: f.shape[1] for p, f in feats.items()} == {"cls": 384, "mean": 384, "cls+mean": 768}
    np.testing.assert_allclose(feats["cls+mean"], np.concatenate([feats["cls"], feats["mean"]], axis=1), atol=1e-5)
    own = embed(load_backbone(arch, "none"), photos[:1])  # timm's own pooling of this model is the class token
    np.testing.assert_allclose(own, feats["cls"], atol=1e-5)
    keys = {EmbeddingSpec.of(bb).key("src") for bb in bbs.values()} | {EmbeddingSpec.of(load_backbone(arch, "none")).key("src")}
    assert len(keys) == 4
    assert EmbeddingSpec.from_attrs(EmbeddingSpec.of(bbs["mean"]).to_attrs()).pooling == "mean"


@needs_timm
def test_pooling_is_refused_where_it_means_nothing():
    with pytest.raises(FeatxUsageError, match="vision transformers"):
        load_backbone("timm:resnet10t", "none", pooling="mean")
    with pytest.raises(FeatxUsageError, match="timm: and clip:"):
        load_backbone("mobilenet_v3_small", "none", pooling="cls")
    with pytest.raises(FeatxUsageError, match="no class token"):
        load_backbone("timm:vit_base_patch16_gap_224", "none", pooling="cls")
    with pytest.raises(FeatxUsageError, match="pools with attention"):  # SigLIP's learnt (MAP) pooling
        load_backbone("timm:vit_base_patch16_siglip_224", "none", pooling="mean")
    out = run("extract", "--data", "x", "--pooling", "max")
    assert out.exit_code == 2 and "cls, mean or cls+mean" in out.output


# -- weights from local files -------------------------------------------------------------------------------------
def test_a_torchvision_state_dict_file_gives_the_in_memory_features(tmp_path, photos):
    import torchvision

    from featx.backbones.loading import seeded_init

    with seeded_init(7):
        model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)
    bb = load_backbone("resnet18", str(path))
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        direct = model.eval()(torch.stack([bb.transform(im) for im in photos])).numpy()
    np.testing.assert_allclose(embed(bb, photos), direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())
    assert bb.weights == "file:mine.pth" and bb.weights_sha256 is not None


@needs_timm
def test_a_timm_safetensors_file_gives_the_in_memory_features(tmp_path, photos):
    from safetensors.torch import save_file

    from featx.backbones.loading import seeded_init
    import timm

    with seeded_init(3):
        model = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))  # classifier included: dropped
    bb = load_backbone("timm:resnet10t", str(path))
    model.reset_classifier(0)
    with torch.inference_mode():
        direct = model.eval()(torch.stack([bb.transform(im) for im in photos])).numpy()
    np.testing.assert_allclose(embed(bb, photos), direct, atol=1e-5)
    assert not np.allclose(embed(load_backbone("timm:resnet10t", "none"), photos), direct)  # another init


# -- OpenCLIP and the zero-shot head ------------------------------------------------------------------------------
TINY_CLIP = {
    "model_cfg": {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


@pytest.fixture
def tiny_clip(tmp_path) -> Path:
    """An OpenCLIP folder (open_clip_config.json + open_clip_model.safetensors) of a tiny random CLIP."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(5)
    model = open_clip.create_model("local-dir:" + str(folder))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


@needs_clip
def test_an_openclip_folder_gives_the_in_memory_features(tiny_clip, photos):
    import open_clip

    model = open_clip.create_model("local-dir:" + str(tiny_clip)).eval()
    bb = load_backbone("clip:tiny", str(tiny_clip))
    with torch.inference_mode():
        direct = model.encode_image(torch.stack([bb.transform(im) for im in photos])).numpy()
    np.testing.assert_allclose(embed(bb, photos), direct, atol=1e-5)
    assert bb.name == "clip-tiny" and bb.feature_dim == 32 and bb.weights == "file:tiny-clip"
    assert bb.preprocess["input_size"] == [3, 32, 32] and bb.preprocess["interpolation"] == "bicubic"


@needs_clip
def test_openclip_pooling_and_random_init(photos):
    bbs = {p: load_backbone("clip:ViT-B-32", "none", pooling=p) for p in ("cls", "mean", "cls+mean")}
    feats = {p: embed(bb, photos[:1]) for p, bb in bbs.items()}
    assert {p: f.shape[1] for p, f in feats.items()} == {"cls": 512, "mean": 512, "cls+mean": 1024}
    np.testing.assert_allclose(feats["cls+mean"], np.concatenate([feats["cls"], feats["mean"]], axis=1), atol=1e-4)
    np.testing.assert_allclose(embed(load_backbone("clip:ViT-B-32", "none"), photos[:1]), feats["cls"], atol=1e-4)
    with pytest.raises(FeatxUsageError, match="no architecture"):
        load_backbone("clip:ViT-B-33", "none")
    with pytest.raises(FeatxError, match="not in the local cache|no weights"):
        load_backbone("clip:ViT-B-32/openai")  # offline: a one-line way forward, no download


@needs_clip
def test_zero_shot_head_from_extract_to_predict_and_export(tiny_clip, tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    cache = tmp_path / "c.h5"
    out = run("extract", "--data", data, "--backbone", "clip:tiny", "--weights-file", tiny_clip, "--out", cache)
    assert out.exit_code == 0, out.output
    fs = open_features(cache)
    assert fs.meta["weights"] == "file:tiny-clip" and fs.meta["weights_file"] == str(tiny_clip.resolve())
    templates = tmp_path / "t.txt"
    templates.write_text("a drawing of a {}.\n# a comment\na {c} shape\n")
    head_file = tmp_path / "zs.skops"
    fitted = run("fit", cache, "--head", "zeroshot", "--templates", templates, "--out", head_file)
    assert fitted.exit_code == 0, fitted.output
    assert "3 class names x 2 templates" in fitted.output and "no training" in fitted.output
    card = json.loads((tmp_path / "zs.json").read_text())
    assert card["zeroshot"]["templates"] == ["a drawing of a {}.", "a {} shape"] and "baselines" not in card
    # the head scores by the text embeddings: logit_scale * cos(image, text(class))
    from featx.heads.persist import load_head

    head, _ = load_head(head_file)
    X = fs["test"].X
    W = head.named_steps["clf"].text_weights
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(head.decision_function(X), head.named_steps["clf"].logit_scale * Xn @ W.T, rtol=1e-4,
                               atol=1e-4)
    # predict through the recorded backbone (the folder's weights, sha256 checked) gives the head's own answers
    test_dir = data / "circle"
    pred = run("predict", "--head-file", head_file, test_dir)
    assert pred.exit_code == 0, pred.output
    assert len([ln for ln in pred.output.splitlines() if ln.startswith(str(test_dir))]) == 6
    # export-model: one module, image -> backbone -> L2 norm -> text weights; same scores as the head
    model_file = tmp_path / "zs.pt2"
    exported = run("export-model", "--head-file", head_file, "-o", model_file)
    assert exported.exit_code == 0, exported.output
    bb = load_backbone("clip:tiny", str(tiny_clip))
    from PIL import Image

    imgs = [Image.open(p).convert("RGB") for p in sorted(test_dir.iterdir())[:3]]
    batch = torch.stack([bb.transform(im) for im in imgs])
    scores = torch.export.load(str(model_file)).module()(batch).detach().numpy()
    np.testing.assert_allclose(scores, head.decision_function(embed(bb, imgs)), rtol=1e-4, atol=1e-4)
    # grid: the trained heads, and the zero-shot baseline row beside them
    grid = run("grid", cache, "--heads", "logreg", "--out", tmp_path / "r", "--no-baselines", "--no-progress")
    assert grid.exit_code == 0, grid.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["zeroshot"]["test"]["n"] == len(fs["test"].y)
    assert "Zero-shot baseline" in (tmp_path / "r" / "report.md").read_text()


@needs_clip
def test_zero_shot_is_refused_without_a_text_tower(tmp_path, tiny_clip):
    data = make_folder(tmp_path / "data", per_class=6)
    cnn = tmp_path / "cnn.h5"
    assert run("extract", "--data", data, "--backbone", "mobilenet_v3_small", "--weights", "none",
               "--out", cnn).exit_code == 0
    out = run("fit", cnn, "--head", "zeroshot")
    assert out.exit_code == 2 and "has no text tower" in out.output and "Traceback" not in out.output
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder here\n")
    clip = tmp_path / "clip.h5"
    assert run("extract", "--data", data, "--backbone", "clip:tiny", "--weights-file", tiny_clip,
               "--out", clip).exit_code == 0
    out = run("fit", clip, "--head", "zeroshot", "--templates", bad)
    assert out.exit_code == 2 and "one {}" in out.output
    out = run("grid", clip, "--heads", "zeroshot")
    assert out.exit_code == 2 and "baseline row" in out.output
    # the folder moved away: the head cannot be rebuilt, and says so in one line
    moved = tmp_path / "elsewhere"
    tiny_clip.rename(moved)
    out = run("fit", clip, "--head", "zeroshot")
    assert out.exit_code != 0 and "not found here" in out.output


def test_backbones_lists_the_families():
    out = run("backbones")
    assert out.exit_code == 0, out.output
    assert "timm:vit_small_patch14_dinov2.lvd142m" in out.output and "clip:ViT-B-32/laion2b_s34b_b79k" in out.output
    row = next(ln for ln in out.output.splitlines() if ln.startswith("timm:vit_base_patch14_dinov2"))
    assert " 768 " in row and "apache-2.0" in row.lower()


@needs_clip
def test_rank_gives_a_clip_candidate_a_zero_shot_score(tiny_clip, tmp_path):
    from featx.data.layout import make_source
    from featx.transfer.rank import rank_backbones

    source = make_source(str(make_folder(tmp_path / "data", per_class=8)))
    record = rank_backbones(source, [("mobilenet_v3_small", "none"), ("clip:tiny", str(tiny_clip))], sample=24,
                            folds=2, cache_dir=tmp_path / "cache")
    rows = {r["backbone"]: r for r in record["candidates"]}
    assert "zeroshot_top1" not in rows["mobilenet_v3_small"]
    assert 0.0 <= rows["clip-tiny"]["zeroshot_top1"] <= 1.0
    from featx.transfer.report import _table

    header, table = _table(record)
    assert "zero-shot top-1" in header and "-" in [row[header.index("zero-shot top-1")] for row in table]
