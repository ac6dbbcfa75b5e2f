"""Cached partial fine-tuning: the bottom runs once, the top trains on its cached maps, the result predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY
from featx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from conftest import make_folder

    root = tmp_path_factory.mktemp("ft")
    data = make_folder(root / "shapes", per_class=8)
    args = ("finetune", "--data", data, "--backbone", TINY, "--weights", "none", "--blocks", "2", "--epochs", "2",
            "--cache-dir", root / "cache", "--out", root / "ft", "--no-progress")
    first = run(*args)
    assert first.exit_code == 0, first.output
    return root, data, args, first


def test_finetune_caches_the_maps_once_and_saves_safe_tensors(tuned):
    from safetensors.torch import load_file

    root, data, args, first = tuned
    card = json.loads((root / "ft" / "finetuned.json").read_text())
    assert card["blocks"] == 2 and card["cut"].startswith("features.") and "val" in card["metrics"]
    assert "caching the maps entering" in first.stderr and "MB in" in first.stderr  # the size, said first
    tensors = load_file(str(root / "ft" / "finetuned.safetensors"))
    cut = int(card["cut"].split(".")[1])
    trained = {int(k.split(".")[2]) for k in tensors if k.startswith("model.features.")}
    assert min(trained) == cut, "nothing below the cut is saved: the bottom is frozen"
    assert tensors["fc.weight"].shape[0] == 3
    again = run(*args[:-3], "--out", root / "ft2", "--no-progress")
    assert again.exit_code == 0 and "reusing the cached maps" in again.stderr
    assert json.loads((root / "ft2" / "finetuned.json").read_text())["metrics"] == card["metrics"], "seeded"
    rerun = run(*args[:-3], "--out", root / "ft2", "--no-progress")  # its own earlier output is replaced
    assert rerun.exit_code == 0, rerun.output


def test_a_finetuned_network_predicts_and_its_tensors_are_checked(tuned, tmp_path):
    from featx.finetune.run import load_finetuned

    root, data, _, _ = tuned
    weights = root / "ft" / "finetuned.safetensors"
    result = run("predict", "-F", weights, data / "circle", "--out", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    preds = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert len(preds) == 8 and all(abs(sum(p["scores"]) - 1) < 1e-4 for p in preds if len(p["scores"]) == 3)
    net, card, bb = load_finetuned(weights)
    from featx.data.decoding import open_image

    x = bb.transform(open_image(preds[0]["path"])).unsqueeze(0)
    with torch.inference_mode():
        p = torch.softmax(net(x), 1)[0].numpy()
    assert np.isclose(p.max(), preds[0]["scores"][0], atol=1e-4)
    assert card["classes"][int(p.argmax())] == preds[0]["labels"][0]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(weights.read_bytes())
    (tmp_path / "bad.json").write_text((root / "ft" / "finetuned.json").read_text())
    blob = bytearray(bad.read_bytes())
    blob[-1] ^= 1
    bad.write_bytes(bytes(blob))
    refused = run("predict", "-F", bad, data / "circle")
    assert refused.exit_code == 1 and "does not match its card" in refused.stderr


def test_finetune_refuses_a_cut_the_trunk_cannot_take(tuned):
    root, data, _, _ = tuned
    result = run("finetune", "--data", data, "--backbone", TINY, "--weights", "none", "--blocks", "99",
                 "--cache-dir", root / "cache", "--out", root / "x")
    assert result.exit_code == 2 and "train 1 to" in result.stderr and not (root / "x").exists()
