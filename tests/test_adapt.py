"""Domain adaptation on cached features: each method undoes a known shift, refusals, saved heads, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from featx import open_features
from featx.cache.writer import FeatureWriter
from featx.cli import main
from featx.adapt.maps import make_map
from featx.heads.persist import load_head

pytest.importorskip("skada")

CLASSES = ["a", "b", "c"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _domain(rng, n, shift=None):
    """Three Gaussian classes in 16-d; ``shift``: (scale per dim, rotation, offset) applied to the target."""
    centres = np.array([[3.0] + [0.0] * 15, [0.0, 3.0] + [0.0] * 14, [0.0, 0.0, 3.0] + [0.0] * 13])
    y = rng.integers(0, 3, n)
    X = centres[y] + rng.normal(size=(n, 16))
    if shift is not None:
        scale, rotation, offset = shift
        X = (X * scale) @ rotation + offset
    return X.astype(np.float32), y


def _cache(path, splits, *, classes=CLASSES, backbone="tiny", dim=16, precision="fp32"):
    attrs = {"cache_key": path.stem, "backbone": backbone, "weights": "none", "weights_sha256": "", "layer": "penultimate",
             "transform": {"input_size": [3, 8, 8]}, "source": {"kind": "test"}, "precision": precision,
             "decoder": "pil"}
    with FeatureWriter(path, attrs=attrs, classes=classes, split_sizes={s: len(y) for s, (X, y) in splits.items()},
                       feature_dim=dim) as w:
        for s, (X, y) in splits.items():
            w.append(s, X, y, [f"{s}/{i}" for i in range(len(y))])
        w.finalize()
    return path


@pytest.fixture
def shifted(tmp_path):
    """A source and a target under a strong, known shift: each feature rescaled and offset, as a change of
    camera or scanner does to CNN features (no rotation: no unsupervised method can tell one from a relabelling)."""
    rng = np.random.default_rng(0)
    shift = (rng.uniform(0.2, 3.0, 16), np.eye(16), rng.normal(0, 4, 16))
    source = _cache(tmp_path / "source.h5", {"train": _domain(rng, 600)})
    target = _cache(tmp_path / "target.h5", {"train": _domain(rng, 600, shift), "test": _domain(rng, 300, shift)})
    return source, target, shift


@pytest.mark.parametrize("method", ["standardize", "coral", "subspace"])
def test_each_method_brings_the_domains_together(method):
    """A known shift of the target: after the map the domain gap (covariance and mean) shrinks."""
    rng = np.random.default_rng(1)
    Xs, _ = _domain(rng, 800)
    Xt, _ = _domain(rng, 800, (rng.uniform(0.2, 3.0, 16), np.eye(16), rng.normal(0, 4, 16)))
    Ms, Mt = make_map(method, n_components=8).fit_map(Xs, Xt)
    gap = lambda a, b: np.abs(np.cov(a.T) - np.cov(b.T)).mean() + np.abs(a.mean(0) - b.mean(0)).mean()  # noqa: E731
    assert gap(Ms, Mt) < 0.3 * gap(Xs, Xt), (gap(Ms, Mt), gap(Xs, Xt))
    np.testing.assert_allclose(make_map(method, n_components=8).fit_map(Xs, Xt)[1], Mt, rtol=1e-6, atol=1e-6)


def test_adapt_beats_source_only_writes_reports_and_saved_heads_apply_it(shifted, tmp_path):
    source, target, shift = shifted
    out = tmp_path / "rep"
    result = run("adapt", source, target, "--head", "logreg", "--method", "all", "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "adapt.json").read_text())
    by = {r["method"]: r for r in record["methods"]}
    assert set(by) == {"none", "standardize", "coral", "subspace"}
    assert by["none"]["target"]["top1"] < 0.8  # the shift hurts the source-only head (0.77)
    for method in ("standardize", "coral", "subspace"):  # 0.95, 0.95, 0.92
        assert by[method]["target"]["top1"] > by["none"]["target"]["top1"] + 0.1, method
    assert by["coral"]["proxy_a_distance"] < record["proxy_a_distance_before"]
    assert record["ceiling"]["top1"] > 0.9
    for method in ("standardize", "coral", "subspace"):  # +0.15 or more on 300 items: beyond the noise
        lo, hi = by[method]["gain_ci"]
        assert lo > 0 and lo <= by[method]["gain_over_source_only"] <= hi and by[method]["verdict"] == "helps"
    choice = record["choice"]  # 0.947, 0.933, 0.917 on 300 items: tied; the simplest of them is chosen
    assert choice["chosen"] == choice["tied"][0] and "none" not in choice["tied"]
    assert record["best_method"] == choice["chosen"] and f"best: {choice['chosen']}" in result.stdout
    md = (out / "report.md").read_text()
    assert "| coral |" in md and "proxy A-distance" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()
    head, card = load_head(out / "coral.skops")  # a safe head: no --trust
    assert card["adaptation"]["method"] == "coral" and card["adaptation"]["target_cache_key"] == "target"
    Xt, yt = open_features(target)["test"].labelled()
    assert (head.predict(Xt) == yt).mean() == pytest.approx(by["coral"]["target"]["top1"])


def test_a_method_that_loses_is_flagged(shifted, tmp_path):
    """No shift at all: any map can only add noise; a loss, if any, is warned about in the report."""
    rng = np.random.default_rng(3)
    source = _cache(tmp_path / "s.h5", {"train": _domain(rng, 200)})
    target = _cache(tmp_path / "t.h5", {"train": _domain(rng, 200), "test": _domain(rng, 200)})
    result = run("adapt", source, target, "--method", "subspace", "--components", "1", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r" / "adapt.json").read_text())
    sub = next(r for r in record["methods"] if r["method"] == "subspace")
    assert sub["worse_than_source_only"]  # one component cannot hold three classes
    assert "subspace made target accuracy worse" in (tmp_path / "r" / "report.md").read_text()
    assert "subspace made target accuracy worse" in result.stderr


def test_target_shots_and_an_unlabelled_target(shifted, tmp_path):
    source, target, _ = shifted
    shots = run("adapt", source, target, "--method", "none", "--target-shots", "5", "--out", tmp_path / "s")
    assert shots.exit_code == 0, shots.output
    with_shots = json.loads((tmp_path / "s" / "adapt.json").read_text())["methods"][0]["target"]["top1"]
    plain = run("adapt", source, target, "--method", "none", "--out", tmp_path / "p")
    without = json.loads((tmp_path / "p" / "adapt.json").read_text())["methods"][0]["target"]["top1"]
    assert with_shots > without
    rng = np.random.default_rng(4)
    X, _ = _domain(rng, 100)
    unlabelled = _cache(tmp_path / "u.h5", {"train": (X, np.full(100, -1))})
    result = run("adapt", source, unlabelled, "--method", "coral", "--out", tmp_path / "u")
    assert result.exit_code == 0 and "target unlabelled" in result.stdout


def test_refusals_are_one_line(shifted, tmp_path):
    source, _, _ = shifted
    rng = np.random.default_rng(5)
    other = _cache(tmp_path / "other.h5", {"train": _domain(rng, 50)}, backbone="resnet50")
    result = run("adapt", source, other)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "hold different features (backbone 'tiny' source, 'resnet50' target)" in result.stderr
    bf16 = _cache(tmp_path / "bf16.h5", {"train": _domain(rng, 50)}, precision="bf16")  # same network, other numbers
    result = run("adapt", source, bf16)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "precision 'fp32' source, 'bf16' target" in result.stderr
    renamed = _cache(tmp_path / "renamed.h5", {"train": _domain(rng, 50)}, classes=["a", "b", "z"])
    result = run("adapt", source, renamed)
    assert result.exit_code == 2 and "classes the source does not (z)" in result.stderr
    assert run("adapt", source, source, "--method", "magic").exit_code == 2
