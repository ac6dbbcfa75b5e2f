"""Pipeline files and dataset adapters."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, make_folder, needs_fashion
from featx import FeatxError
from featx.pipeline import load_pipeline
from featx.data.files import ImageFolderSource
from featx.data.layout import make_source
from featx.data.sources import carve_splits

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


def test_carving_is_deterministic_and_close_to_the_fractions():
    labels = np.repeat(np.arange(4), 500)
    ids = [f"c{label}/{i:04d}.jpg" for i, label in enumerate(labels)]
    parts, notes = carve_splits(ids, labels, {"test": 0.1, "val": 0.2}, seed=0)
    again, _ = carve_splits(ids, labels, {"test": 0.1, "val": 0.2}, seed=0)
    assert all(np.array_equal(parts[s], again[s]) for s in parts) and not notes
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(2000))  # each item exactly once
    for split, fraction in (("test", 0.1), ("val", 0.2)):
        per_class = Counter(labels[parts[split]].tolist())
        assert all(abs(n - 500 * fraction) < 4 * (500 * fraction) ** 0.5 for n in per_class.values()), per_class
    assert not np.array_equal(carve_splits(ids, labels, {"test": 0.1, "val": 0.2}, seed=1)[0]["test"], parts["test"])


def test_adding_ten_percent_more_items_moves_no_existing_item_to_another_split():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 1000)
    ids = [f"{label}/img{i:05d}.jpg" for i, label in enumerate(labels)]
    new_labels = np.concatenate([labels, rng.integers(0, 6, 100)])  # 10% more, one class new
    new_ids = ids + [f"{label}/new{i:05d}.jpg" for i, label in enumerate(new_labels[1000:])]

    def split_of(ids, labels):
        parts, _ = carve_splits(ids, labels, {"test": 0.1, "val": 0.1}, seed=0)
        return {ids[i]: s for s, idx in parts.items() for i in idx}

    before, after = split_of(ids, labels), split_of(new_ids, new_labels)
    assert all(after[i] == s for i, s in before.items())
    assert Counter(after[i] for i in new_ids[1000:]).keys() >= {"train"}


def test_small_classes_get_one_item_in_each_carved_split_or_stay_in_train():
    labels = np.array([0] * 6 + [1] * 6 + [2] * 6 + [3] * 2)  # Stanford Dogs' tiny trial size, and a 2-item class
    ids = [f"id{i}" for i in range(len(labels))]
    parts, notes = carve_splits(ids, labels, {"test": 0.1, "val": 0.1}, seed=0)
    for split in ("train", "val", "test"):
        assert set(labels[parts[split]].tolist()) >= {0, 1, 2}, split
    assert set(labels[parts["train"]].tolist()) == {0, 1, 2, 3} and notes == [(3, 2)]


def test_image_folder_flat_and_presplit(tmp_path):
    flat = ImageFolderSource(make_folder(tmp_path / "flat", per_class=10), val_fraction=0.2, test_fraction=0.2)
    splits = flat.splits()
    assert flat.classes == list(CLASSES)
    assert sum(len(i) for i in splits.values()) == 30 and min(len(splits["val"]), len(splits["test"])) >= 3
    assert set(splits["test"].labels.tolist()) == set(splits["val"].labels.tolist()) == {0, 1, 2}
    img = flat.open(splits["train"].keys[0])
    assert img.size == (48, 48)

    root = tmp_path / "pre"
    make_folder(root / "train", per_class=4)
    make_folder(root / "test", per_class=2, seed=1)
    pre = ImageFolderSource(root, val_fraction=0.25)
    splits = pre.splits()
    assert len(splits["train"]) + len(splits["val"]) == 12 and len(splits["test"]) == 6
    assert set(splits["val"].labels.tolist()) == {0, 1, 2}
    assert splits["test"].ids[0].startswith("test/circle/")


def test_bad_data_strings(tmp_path):
    with pytest.raises(FeatxError, match="is neither torchvision:<Name>, a .csv manifest, tar shards .* nor an existing "
                                         "directory"):
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
    sizes = {s: len(i) for s, i in splits.items()}
    assert sizes["train"] + sizes["val"] == 60000 and abs(sizes["val"] - 6000) < 300 and sizes["test"] == 10000
    assert all(abs(n - 600) < 100 for n in Counter(splits["val"].labels.tolist()).values())
    assert src.classes[0] == "T-shirt/top" and len(src.classes) == 10
    assert src.open(splits["test"].keys[0]).size == (28, 28)
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_dataset_offline_says_what_to_fetch(tmp_path, monkeypatch):
    import featx.data.torchvision_data

    monkeypatch.setitem(featx.data.torchvision_data.OFFLINE_DATA, "FashionMNIST", (str(tmp_path / "nowhere"), "dataset-fashion-mnist"))
    with pytest.raises(FeatxError, match="dataset FashionMNIST is not available in .*apt-get install dataset-fashion-mnist"):
        make_source("torchvision:FashionMNIST", root=tmp_path / "data").splits()
