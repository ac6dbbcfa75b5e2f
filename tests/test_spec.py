"""EmbeddingSpec: the one record of "which features are these", its keys, and the commands that compare it."""

from __future__ import annotations

import dataclasses

import pytest

from featx.cache.spec import EmbeddingSpec, effective_decoder

FINGERPRINT = {"kind": "folder", "items": [["a.png", 10, 1]]}
MOBILENET = EmbeddingSpec(backbone="mobilenet_v2", weights="IMAGENET1K_V1", weights_sha256="b0353104" * 8,
                          transform={"input_size": [3, 224, 224], "resize": 256}, feature_dim=1280)
RANDOM_LAYER = EmbeddingSpec(backbone="mobilenet_v2", weights="none", weights_sha256=None, layer="features.14",
                             transform={"input_size": [3, 224, 224]})


@pytest.mark.parametrize("spec, key", [
    # values computed with featx's cache key before EmbeddingSpec existed: every existing cache keeps its name
    (MOBILENET, "82a21e29bf5c1c3b"),
    (dataclasses.replace(MOBILENET, precision="bf16", decoder="scaled"), "9f4525f3b7217c54"),
    (dataclasses.replace(RANDOM_LAYER, decoder="device"), "8ae26ad832820bc1"),
    (dataclasses.replace(RANDOM_LAYER, decoder="in-memory"), "9f9e3bf9d7d6d105"),
])
def test_keys_are_the_ones_caches_already_have(spec, key):
    assert spec.key(FINGERPRINT) == key


def test_the_record_survives_a_cache_and_a_card():
    for spec in (MOBILENET, RANDOM_LAYER):
        attrs = spec.to_attrs()
        assert attrs["layer"] in ("penultimate", "features.14")
        assert EmbeddingSpec.from_attrs(attrs) == spec
    # a cache written before precision, decoder or layer were recorded reads them as the defaults
    old = {k: v for k, v in MOBILENET.to_attrs().items() if k not in ("precision", "decoder", "layer")}
    assert EmbeddingSpec.from_attrs(old).same_features(MOBILENET)


def test_same_features_and_what_differs():
    bf16 = dataclasses.replace(MOBILENET, precision="bf16")
    assert not MOBILENET.same_features(bf16)
    assert MOBILENET.difference(bf16) == "precision 'fp32' here, 'bf16' there"
    # the exact decoder of files and a dataset held in memory make the same features
    assert MOBILENET.same_features(dataclasses.replace(MOBILENET, decoder="in-memory"))
    assert not MOBILENET.same_features(dataclasses.replace(MOBILENET, decoder="scaled"))
    # a record without the weights' sha256 is judged by the weights' name; two different sha256 differ
    assert MOBILENET.same_features(dataclasses.replace(MOBILENET, weights_sha256=None))
    assert MOBILENET.differences(dataclasses.replace(MOBILENET, weights_sha256="0" * 64)) == ["weights_sha256"]
    assert "the transform differs" in MOBILENET.difference(dataclasses.replace(MOBILENET, transform={}))
    # an unknown dimension (0) decides nothing; every other field does
    assert MOBILENET.differences(RANDOM_LAYER) == ["weights", "weights_sha256", "layer", "transform"]


def test_effective_decoder_is_one_rule():
    assert effective_decoder("scaled", has_files=True) == "scaled"
    assert effective_decoder("scaled", has_files=False) == "in-memory"
    assert effective_decoder("device", has_files=False, on_device=True) == "device"


def test_a_cache_and_a_head_card_carry_the_spec(image_folder, tiny_backbone, tmp_path):
    from featx import open_features
    from featx.data.files import ImageFolderSource
    from featx.extract import extract, spec_for
    from featx.heads.persist import load_head
    from featx.heads.registry import make_head
    from featx.probe.fitting import fit_head

    source = ImageFolderSource(image_folder)
    result = extract(source, tiny_backbone, cache_dir=tmp_path / "cache", progress=False)
    fs = open_features(result.path)
    spec = EmbeddingSpec.from_attrs(fs.meta)
    assert spec == spec_for(source, tiny_backbone)
    assert spec.key(source.fingerprint()) == fs.cache_key and result.path.name == f"{spec.backbone}-{fs.cache_key}.h5"
    assert spec.feature_dim == fs["train"].X.shape[1]
    fitted = fit_head("logreg", make_head("logreg"), result.path, out=tmp_path / "h.skops")
    _, card = load_head(fitted.head_path)
    assert EmbeddingSpec.from_attrs(card["embedding"]) == spec
