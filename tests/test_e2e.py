"""End to end on the real embedded default: Fashion-MNIST + MobileNetV2 IMAGENET1K_V1, offline."""

import json
import os
import subprocess
import sys

import pytest

from conftest import needs_fashion

pytestmark = [pytest.mark.slow, needs_fashion]


def featx(*args, cwd):
    env = {**os.environ, "FEATX_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "featx", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_default_pipeline_end_to_end_on_300_real_images(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    common = ["--pipeline", os.path.join(repo, "pipelines", "default.toml"), "--limit", "100",
              "--root", os.path.join(repo, "cache", "datasets"), "--cache-dir", tmp_path, "--no-progress"]
    first = featx("extract", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "images/s" in first.stdout and "300 items" in first.stdout
    second = featx("extract", *common, cwd=tmp_path)
    assert second.returncode == 0 and "reusing" in second.stdout

    cache = next((tmp_path / "fashionmnist").glob("mobilenet_v2-*.h5"))
    info = featx("info", "--json", cache, cwd=tmp_path)
    meta = json.loads(info.stdout)
    assert meta["backbone"] == "mobilenet_v2" and meta["weights"] == "IMAGENET1K_V1"
    assert meta["weights_sha256"].startswith("b0353104")
    assert {s: v["rows"] for s, v in meta["splits"].items()} == {"train": 100, "val": 100, "test": 100}

    fit = featx("fit", cache, "--head", "logreg", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    card = json.loads(cache.with_name(f"{cache.stem}.logreg.json").read_text())
    # 100 training images of 10 classes: ImageNet features already separate Fashion-MNIST well.
    assert card["metrics"]["test"]["top1"] > 0.6
