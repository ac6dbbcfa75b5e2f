"""Dataset adapters on fixtures in their real on-disk layouts, and layout detection."""

import numpy as np
import pytest
from scipy.io import savemat

from conftest import CLASSES, draw, make_folder
from featx import FeatxError
from featx.data.files import ImageFolderSource, ManifestSource, StanfordDogsSource
from featx.data.layout import layout_of, make_source
from featx.data.torchvision_data import TorchvisionSource

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def make_stanford_dogs(root, train_per_class=4, test_per_class=2):
    """A miniature Stanford Dogs tree: Images/<wnid>-<breed>/*.jpg and the official .mat lists."""
    rng = np.random.default_rng(0)
    lists = {"train": [], "test": []}
    for label, breed in enumerate(BREEDS, 1):
        (root / "Images" / breed).mkdir(parents=True)
        wnid = breed.split("-")[0]
        for i in range(train_per_class + test_per_class):
            rel = f"{breed}/{wnid}_{i:04d}.jpg"
            draw(CLASSES[label - 1], rng, size=40).save(root / "Images" / rel)
            lists["train" if i < train_per_class else "test"].append((rel, label))
    (root / "lists").mkdir()
    for split, rows in lists.items():
        # As in the official files: cell arrays of strings (object arrays) and an (N, 1) label column.
        files = np.empty((len(rows), 1), dtype=object)
        annotations = np.empty((len(rows), 1), dtype=object)
        for i, (rel, _) in enumerate(rows):
            files[i, 0] = np.array([rel])
            annotations[i, 0] = np.array([rel.removesuffix(".jpg")])
        labels = np.array([[y] for _, y in rows], dtype=np.uint8)
        savemat(root / "lists" / f"{split}_list.mat",
                {"file_list": files, "annotation_list": annotations, "labels": labels})
    return root


def test_stanford_dogs_official_layout(tmp_path):
    root = make_stanford_dogs(tmp_path / "dogs")
    src = make_source(str(root), val_fraction=0.25)
    assert isinstance(src, StanfordDogsSource) and layout_of(src) == "Stanford Dogs (official layout)"
    splits = src.splits()
    assert src.classes == ["Chihuahua", "Japanese_spaniel", "Maltese_dog"]
    assert len(splits["train"]) + len(splits["val"]) == 12 and len(splits["test"]) == 6
    assert set(splits["val"].labels.tolist()) == {0, 1, 2}  # each breed in val, although 12 x 0.25 = 3
    assert splits["test"].ids[0] == "n02085620-Chihuahua/n02085620_0004.jpg"
    assert splits["test"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert src.open(splits["train"].keys[0]).size == (40, 40)


def test_stanford_dogs_list_naming_a_missing_file(tmp_path):
    root = make_stanford_dogs(tmp_path / "dogs")
    (root / "Images" / BREEDS[1] / "n02085782_0005.jpg").unlink()
    with pytest.raises(FeatxError, match="1 listed file.* do not exist, e.g. .*n02085782_0005.jpg"):
        make_source(str(root)).splits()


def test_manifest_with_splits_unlabelled_rows_and_header(tmp_path):
    make_folder(tmp_path / "img", per_class=4)
    rows = ["path,label,split"]
    for c in CLASSES:
        rows += [f"img/{c}/{c}_000.png,{c},train", f"img/{c}/{c}_001.jpg,{c},val", f"img/{c}/{c}_002.jpg,{c},test"]
    rows.append("img/circle/circle_003.png,,test")  # unlabelled (a file of its own: one file is listed once)
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    src = make_source(str(tmp_path / "data.csv"))
    assert isinstance(src, ManifestSource) and layout_of(src) == "CSV manifest"
    splits = src.splits()
    assert src.classes == sorted(CLASSES)
    assert {s: len(i) for s, i in splits.items()} == {"train": 3, "val": 3, "test": 4}
    assert splits["test"].labels.tolist()[-1] == -1
    assert splits["train"].ids[0] == "img/circle/circle_000.png"


def test_manifest_without_split_column_is_carved(tmp_path):
    make_folder(tmp_path / "img", per_class=10)
    lines = [f"img/{c}/{c}_{i:03d}.{'png' if i % 3 == 0 else 'jpg'},{c}" for c in CLASSES for i in range(10)]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    splits = make_source(str(tmp_path / "m.csv")).splits()
    assert {s: len(i) for s, i in splits.items()} == {"train": 24, "val": 3, "test": 3}


@pytest.mark.parametrize("content,message", [
    ("a.jpg,cat,holdout\n", r"m.csv:1: unknown split 'holdout'"),
    ("a.jpg\n", r"m.csv:1: expected path,label\[,split\]"),
    ("missing.jpg,cat\n", r"1 listed file\(s\) do not exist, e.g. .*missing.jpg"),
    ("../outside.jpg,cat\n", r"m.csv:1: \.\./outside.jpg is outside the manifest's folder"),
    ("a.jpg,cat,train\nb.jpg,dog\n", r"m.csv:2: no split, but other rows have one"),
    ("path,label\n", "lists no images"),
])
def test_manifest_errors_are_one_clear_line(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(FeatxError, match=message):
        ManifestSource(tmp_path / "m.csv").splits()


def test_image_folder_detection_and_bad_paths(tmp_path):
    src = make_source(str(make_folder(tmp_path / "flat", per_class=4)))
    assert isinstance(src, ImageFolderSource) and layout_of(src) == "image folder (class folders)"
    with pytest.raises(FeatxError, match="neither"):
        make_source(str(tmp_path / "nope"))


def make_dtd(root, per_class=2):
    """torchvision's DTD layout: dtd/dtd/images/<class>/*.jpg and dtd/dtd/labels/{train,val,test}1.txt."""
    rng = np.random.default_rng(1)
    data = root / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    names = {"train": [], "val": [], "test": []}
    for c in ("banded", "dotted"):
        (data / "images" / c).mkdir(parents=True)
        for split in names:
            for i in range(per_class):
                name = f"{c}_{split}_{i}.jpg"
                draw("stripes" if c == "banded" else "circle", rng, size=32).save(data / "images" / c / name)
                names[split].append(f"{c}/{name}")
    for split, lines in names.items():
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return root


def test_torchvision_split_datasets_use_their_official_splits(tmp_path):
    src = make_source("torchvision:DTD", root=make_dtd(tmp_path))
    assert isinstance(src, TorchvisionSource)
    splits = src.splits()
    assert src.classes == ["banded", "dotted"]
    assert {s: len(i) for s, i in splits.items()} == {"train": 4, "val": 4, "test": 4}
    assert splits["val"].ids[0] == "val/0" and src.describe()["val_from"] == "official"
    assert src.open(splits["test"].keys[0]).size == (32, 32)


def test_torchvision_dataset_missing_offline_names_where(tmp_path):
    with pytest.raises(FeatxError, match=r"dataset DTD is not available in .*--download"):
        make_source("torchvision:DTD", root=tmp_path).splits()
    with pytest.raises(FeatxError, match="did you mean FashionMNIST"):
        make_source("torchvision:FashionMnist")
