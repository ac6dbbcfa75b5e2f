"""WebDataset tar shards as a source (issue 28): `--data` a .tar, a folder of them or a brace pattern; members
KEY.jpg + KEY.cls / KEY.json; extracted like the same images in a folder."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CLASSES, TINY, make_folder
from featx import open_features
from featx.cli import main
from featx.data.webdataset import expand_braces


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_shards(folder, tmp_path, per_shard=14, label_as="cls"):
    """The image folder's files, as WebDataset shards of ``per_shard`` samples (labels as .cls or .json)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    out = tmp_path / "shards"
    out.mkdir()
    names = []
    for n, lo in enumerate(range(0, len(files), per_shard)):
        name = out / f"part-{n:03d}.tar"
        with tarfile.open(name, "w") as tar:
            for f in files[lo:lo + per_shard]:
                key = f"{f.parent.name}_{f.stem}"
                tar.add(f, arcname=f"{key}{f.suffix}")
                label = f.parent.name if label_as == "cls" else json.dumps({"label": f.parent.name})
                data = label.encode()
                info = tarfile.TarInfo(f"{key}.{label_as}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        names.append(name)
    return out, names


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("a{1..2}-{0..1}.tar") == ["a1-0.tar", "a1-1.tar", "a2-0.tar", "a2-1.tar"]


@pytest.mark.parametrize("spelling", ["folder", "pattern", "one"])
def test_shards_extract_like_the_folder_they_came_from(spelling, tmp_path):
    images = make_folder(tmp_path / "images", per_class=8)
    shards, names = write_shards(images, tmp_path, label_as="json" if spelling == "pattern" else "cls")
    data = {"folder": shards, "pattern": shards / f"part-{{000..{len(names) - 1:03d}}}.tar", "one": names[0]}[spelling]
    out = run("extract", "--data", data, "--backbone", TINY, "--weights", "none", "--out", tmp_path / "s.h5",
              "--val-fraction", "0", "--test-fraction", "0")
    assert out.exit_code == 0, out.output
    assert "WebDataset tar shards" in out.stderr
    ref = run("extract", "--data", images, "--backbone", TINY, "--weights", "none", "--out", tmp_path / "f.h5",
              "--val-fraction", "0", "--test-fraction", "0")
    assert ref.exit_code == 0, ref.output
    shard_fs, folder_fs = open_features(tmp_path / "s.h5"), open_features(tmp_path / "f.h5")
    assert list(shard_fs.classes) == list(CLASSES[:2] if spelling == "one" else CLASSES)
    by_key = {i.split("/", 1)[1]: (x, y) for i, x, y in zip(shard_fs["train"].ids, shard_fs["train"].X,
                                                            shard_fs["train"].y)}
    n = 0
    for i, x, y in zip(folder_fs["train"].ids, folder_fs["train"].X, folder_fs["train"].y):
        key = i.replace("/", "_").rsplit(".", 1)[0]
        if key in by_key:  # the same image through the shard gives the same row and label
            np.testing.assert_allclose(by_key[key][0], x, rtol=1e-5, atol=1e-6)
            assert by_key[key][1] == y
            n += 1
    assert n == len(shard_fs["train"]) == (14 if spelling == "one" else 24)
    again = run("extract", "--data", data, "--backbone", TINY, "--weights", "none", "--out", tmp_path / "s.h5",
                "--val-fraction", "0", "--test-fraction", "0")
    assert again.exit_code == 0 and "reus" in again.output + again.stderr


def test_a_missing_or_broken_shard_is_one_line(tmp_path):
    out = run("extract", "--data", tmp_path / "s-{000..001}.tar", "--weights", "none")
    assert out.exit_code == 2 and "does not exist" in out.output
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    out = run("extract", "--data", bad, "--weights", "none", "--backbone", TINY, "--out", tmp_path / "c.h5")
    assert out.exit_code == 1 and "not a readable tar" in out.output and "Traceback" not in out.output
