"""Pipeline files and dataset adapters."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, make_folder, needs_fashion
from featx import FeatxError
from featx.pipeline import load_pipeline
from featx.data.sources import ImageFolderSource, make_source, stratified_split

REPO = Path(__file__).resolve().parents[1]


def test_default_pipeline_is_the_embedded_default():
    exp = load_pipeline(REPO / "pipelines" / "default.toml")
    assert (exp.source.data, exp.backbone.name, exp.backbone.weights, exp.extract.precision) == (
        "torchvision:FashionMNIST", "mobilenet_v2", "IMAGENET1K_V1", "fp32")
    assert exp.source.val_fraction == 0.1 and exp.name == "default"


def test_pipeline_heads_table(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[heads.svm]\nC = 0.5\n')
    assert load_pipeline(p).heads == {"svm": {"C": 0.5}}
    p.write_text('[heads.mlp]\nC = 0.5\n')
    with pytest.raises(FeatxError, match=r"\[heads.mlp\]: unknown head"):
        load_pipeline(p)
    p.write_text('[sauce]\ndata = "x"\n')
    with pytest.raises(FeatxError, match=r"unknown table \[sauce\]"):
        load_pipeline(p)
    p.write_text('[source]\nval_fraction = true\n')
    with pytest.raises(FeatxError, match="expected a float"):
        load_pipeline(p)


def test_stratified_split_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(4), 50)
    keep, carve = stratified_split(labels, 0.2, seed=0)
    keep2, carve2 = stratified_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(carve, carve2)
    assert len(carve) == 40 and set(Counter(labels[carve]).values()) == {10}
    assert not set(keep) & set(carve) and len(keep) + len(carve) == 200
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], carve)


def test_image_folder_flat_and_presplit(tmp_path):
    flat = ImageFolderSource(make_folder(tmp_path / "flat", per_class=10), val_fraction=0.2, test_fraction=0.2)
    splits = flat.splits()
    assert flat.classes == list(CLASSES)
    assert {s: len(i) for s, i in splits.items()} == {"train": 18, "val": 6, "test": 6}
    assert Counter(splits["test"].labels.tolist()) == Counter({0: 2, 1: 2, 2: 2})
    img = flat.open(splits["train"].keys[0])
    assert img.size == (48, 48)

    root = tmp_path / "pre"
    make_folder(root / "train", per_class=4)
    make_folder(root / "test", per_class=2, seed=1)
    pre = ImageFolderSource(root, val_fraction=0.25)
    splits = pre.splits()
    assert {s: len(i) for s, i in splits.items()} == {"train": 9, "val": 3, "test": 6}
    assert splits["test"].ids[0].startswith("test/circle/")


def test_bad_data_strings(tmp_path):
    with pytest.raises(FeatxError, match="is neither torchvision:<Name>, a .csv manifest nor an existing directory"):
        make_source(str(tmp_path / "missing"))
    with pytest.raises(FeatxError, match="not supported"):
        make_source("torchvision:ImageNet")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FeatxError, match="holds no images"):
        make_source(str(tmp_path / "empty")).splits()


@needs_fashion
def test_fashion_mnist_offline_from_the_debian_package(tmp_path):
    src = make_source("torchvision:FashionMNIST", root=tmp_path)
    splits = src.splits()
    assert {s: len(i) for s, i in splits.items()} == {"train": 54000, "val": 6000, "test": 10000}
    assert set(Counter(splits["val"].labels.tolist()).values()) == {600}
    assert src.classes[0] == "T-shirt/top" and len(src.classes) == 10
    assert src.open(splits["test"].keys[0]).size == (28, 28)
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_dataset_offline_says_what_to_fetch(tmp_path, monkeypatch):
    import featx.data.sources

    monkeypatch.setitem(featx.data.sources.OFFLINE_DATA, "FashionMNIST", (str(tmp_path / "nowhere"), "dataset-fashion-mnist"))
    with pytest.raises(FeatxError, match="dataset FashionMNIST is not available in .*apt-get install dataset-fashion-mnist"):
        make_source("torchvision:FashionMNIST", root=tmp_path / "data").splits()
