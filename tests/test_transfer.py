"""Transferability estimators on constructed features with a known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from featx.transfer.estimators import logme, probe_accuracy


def _task(rng, n=300, d=32, classes=4, noise=1.0):
    """Class centroids in a few directions plus Gaussian noise of the given size."""
    y = np.repeat(np.arange(classes), n // classes)
    centroids = rng.normal(0, 3, (classes, d))
    return centroids[y] + rng.normal(0, noise, (len(y), d)), y


def _brute_force_evidence(X, target):
    """max over (alpha, beta) of log N(target | 0, I / beta + X X^T / alpha) / N, by direct optimisation."""
    n = len(target)
    K = X @ X.T

    def neg(log_ab):
        a, b = np.exp(log_ab)
        C = np.eye(n) / b + K / a
        sign, logdet = np.linalg.slogdet(C)
        return 0.5 * (logdet + target @ np.linalg.solve(C, target) + n * np.log(2 * np.pi))

    best = min((minimize(neg, x0, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
                for x0 in ([0.0, 0.0], [3.0, 1.0], [-3.0, 2.0])), key=lambda r: r.fun)
    return -best.fun / n


@pytest.mark.parametrize("n,d", [(40, 5), (30, 60)])  # more samples than dimensions, and fewer
def test_logme_is_the_maximum_evidence(n, d):
    """The fixed point reaches the maximum of the Bayesian linear regression evidence (checked against a
    direct optimisation of the marginal likelihood), per class, averaged."""
    rng = np.random.default_rng(1)
    X, y = _task(rng, n=n, d=d, classes=2, noise=2.0)
    expected = np.mean([_brute_force_evidence(X, (y == c).astype(float)) for c in (0, 1)])
    assert logme(X, y) == pytest.approx(expected, abs=2e-4)


def test_logme_ranks_informative_above_noisy_above_random():
    rng = np.random.default_rng(0)
    clean, y = _task(rng, noise=0.5)
    noisy = clean + rng.normal(0, 4.0, clean.shape)
    random = rng.normal(0, 1, clean.shape)
    scores = [logme(clean, y), logme(noisy, y), logme(random, y)]
    assert scores[0] > scores[1] > scores[2], scores


def test_logme_is_not_fooled_by_useless_dimensions():
    """Evidence, unlike training accuracy, does not reward more parameters: random columns added to
    informative features do not raise the score (the paper's point against maximum likelihood)."""
    rng = np.random.default_rng(0)
    X, y = _task(rng, n=200, d=16)
    padded = np.hstack([X, rng.normal(0, 1, (len(y), 200))])
    assert logme(padded, y) < logme(X, y)


def test_probe_accuracy_separates_informative_from_random():
    rng = np.random.default_rng(0)
    X, y = _task(rng, n=120, d=16, noise=0.5)
    assert probe_accuracy(X, y) > 0.95
    assert probe_accuracy(rng.normal(0, 1, X.shape), y) < 0.5  # 4 classes: chance is 0.25


def test_rank_writes_the_json_shape_says_cant_tell_and_reuses_the_sample(image_folder, tmp_path):
    """The first candidate is itself random-init: its features are the random-init baseline's, so the gain is 0
    and the verdict "can't tell", never a warning."""
    import json

    from click.testing import CliRunner

    from conftest import TINY
    from featx.cli import main

    args = ["rank", "--data", str(image_folder), "--backbones", f"{TINY}:none,resnet18:none", "--sample", "20",
            "--folds", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r" / "rank.json").read_text())
    assert {"candidates", "baselines", "predicted_best"} <= set(record)
    assert set(record["baselines"]) >= {"random_init", "raw_pixels"}
    for c in record["candidates"]:
        assert {"backbone", "weights", "scores", "probe_top1", "transfer"} <= set(c)
        assert {"logme", "probe_top1", "knn_top1"} <= set(c["scores"])
        assert {"verdict", "gain", "ci_low", "ci_high", "n_test", "head", "baseline"} <= set(c["transfer"])
    logmes = [c["scores"]["logme"] for c in record["candidates"]]
    assert logmes == sorted(logmes, reverse=True), "ranked by LogME, best first"
    tiny = next(c for c in record["candidates"] if c["backbone"] == TINY)
    assert tiny["probe_top1"] == record["baselines"]["random_init"]
    assert tiny["transfer"]["verdict"] == "inconclusive" and tiny["transfer"]["ci_low"] <= 0 <= tiny["transfer"]["ci_high"]
    assert "can't tell whether pretraining helps" in result.stdout and "HURTS" not in result.output
    assert "ranking costs about as much as extracting" in result.stderr, "20 of 28 train items: said"
    assert record["n_sampled"] == 20 and (tmp_path / "r" / "report.html").read_text().count("data:image/png") == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert all(c["reused"] for c in json.loads((tmp_path / "r" / "rank.json").read_text())["candidates"])


def test_a_sample_is_stratified_and_keyed_apart_from_the_whole_source(image_folder, tiny_backbone):
    from featx.data.files import ImageFolderSource
    from featx.extract import cache_key

    source = ImageFolderSource(image_folder)
    part = source.sampled(12, seed=0)
    labels = part.splits()["train"].labels
    assert list(part.splits()) == ["train"] and len(labels) == 12
    assert sorted(np.bincount(labels).tolist()) == [4, 4, 4]
    assert cache_key(part, tiny_backbone, "fp32") != cache_key(source, tiny_backbone, "fp32")
    assert source.sample is None and len(source.splits()) == 3, "the source itself is untouched"


def test_fit_reports_baselines_and_warns_when_pretraining_does_not_help(image_folder, tiny_backbone, tmp_path):
    """A cache of random-init features cannot beat its own random-init baseline: the warning fires and the card
    records it; the baseline features are cached beside the cache and reused by the next fit."""
    import json

    from click.testing import CliRunner

    from featx import open_features
    from featx.cli import main
    from featx.data.files import ImageFolderSource
    from featx.extract import extract

    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    result = CliRunner().invoke(main, ["fit", str(cache), "--head", "logreg", "--out", str(tmp_path / "h.skops")])
    assert result.exit_code == 0, result.output
    fs = open_features(cache)
    assert f"baselines ({len(fs['train'])} train / {len(fs['test'])} test items" in result.stdout
    assert "can't tell whether pretraining helps at this sample size: logreg top-1 gain" in result.stdout
    assert "warning" not in result.stderr, "within the noise: no warning"
    card = json.loads((tmp_path / "h.json").read_text())
    b = card["baselines"]
    assert b["pretrained"] == b["random_init"] and card["transfer"] == b["transfer"]
    assert b["transfer"]["verdict"] == "inconclusive" and b["transfer"]["n_test"] == len(fs["test"])
    assert {"raw_pixels", "n_train", "n_test"} <= set(b)
    first = Path(b["random_init_cache"])
    assert first.parent.parent == tmp_path and first.exists(), "cached beside the cache named on the command line"
    store = Path(b["store"])
    assert store == cache.with_name("c.baselines.npz") and store.exists(), "baseline features stored beside the cache"
    first.unlink()  # a later fit or grid reads the stored baseline features: it extracts nothing
    again = CliRunner().invoke(main, ["fit", str(cache), "--head", "svm", "--out", str(tmp_path / "h2.skops")])
    assert again.exit_code == 0 and not first.exists(), "read from the store, not extracted again"
    assert json.loads((tmp_path / "h2.json").read_text())["baselines"]["n_test"] == b["n_test"]
    grid = CliRunner().invoke(main, ["grid", str(cache), "--heads", "knn", "--jobs", "1", "--out", str(tmp_path / "r")])
    assert grid.exit_code == 0 and not first.exists() and "baselines of knn" in grid.stderr
    quiet = CliRunner().invoke(main, ["fit", str(cache), "--head", "logreg", "--no-baselines",
                                      "--out", str(tmp_path / "h3.skops")])
    assert quiet.exit_code == 0 and "baselines (" not in quiet.stdout
    assert "baselines" not in json.loads((tmp_path / "h3.json").read_text())


def test_baselines_on_real_pretrained_features(fashion_cache, tmp_path):
    """The embedded MobileNetV2 on 100 real Fashion-MNIST items per split: three accuracies on the same rows."""
    from featx import open_features
    from featx.transfer.baselines import run_baselines

    b = run_baselines(open_features(fashion_cache), "logreg", {}, cache_dir=tmp_path)
    assert (b["n_train"], b["n_test"]) == (100, 100)
    assert all(0.3 < b[k] <= 1.0 for k in ("pretrained", "random_init", "raw_pixels"))  # 10 classes: chance 0.1
    t = b["transfer"]
    assert t["gain"] == pytest.approx(b["pretrained"] - b[t["baseline"]], abs=1e-4)
    assert t["ci_low"] <= t["gain"] <= t["ci_high"] and t["n_test"] == 100


def test_grid_reports_the_best_heads_baselines(image_folder, tiny_backbone, tmp_path):
    import json

    from click.testing import CliRunner

    from featx.cli import main
    from featx.data.files import ImageFolderSource
    from featx.extract import extract

    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    base = ["grid", str(cache), "--heads", "logreg", "--grid", "C=0.1", "--jobs", "1"]
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    b = results["baselines"]
    assert b["head"] == "logreg" and b["pretrained"] == b["random_init"]
    assert results["transfer"]["verdict"] == "inconclusive" and results["transfer"]["head"] == "logreg"
    assert "Does pretraining help?" in (tmp_path / "r" / "report.md").read_text()
    assert "can't tell whether pretraining helps" in (tmp_path / "r" / "report.md").read_text()
    off = CliRunner().invoke(main, [*base, "--no-baselines", "--out", str(tmp_path / "r2")])
    assert off.exit_code == 0 and "baselines" not in json.loads((tmp_path / "r2" / "results.json").read_text())


def _sets(rng, informative: bool, n=240, d=16):
    """Pretrained-like features (class means apart) or noise, with noise baselines, on the same items."""
    X, y = _task(rng, n=n, d=d, noise=0.8)
    order = rng.permutation(n)
    X, y = X[order], y[order]
    noise = rng.normal(0, 1, X.shape)
    good, bad = (X, noise) if informative else (noise, X)
    half = n // 2
    split = lambda Z: (Z[:half], y[:half], Z[half:], y[half:])  # noqa: E731
    return {"pretrained": split(good), "random_init": split(bad), "raw_pixels": split(rng.normal(0, 1, X.shape))}


@pytest.mark.parametrize("informative, verdict", [(True, "helps"), (False, "hurts")])
def test_the_verdict_says_helps_or_hurts_only_beyond_the_noise(informative, verdict):
    from featx.probe.verdict import transfer_verdict

    t = transfer_verdict("logreg", {}, _sets(np.random.default_rng(0), informative))
    assert t["verdict"] == verdict and (t["ci_low"] > 0 if informative else t["ci_high"] < 0)
    tune = {k: v["tune_top1"] for k, v in t["tuned"].items()}
    assert tune[t["baseline"]] == max(tune["random_init"], tune["raw_pixels"]), "chosen on tuning rows, not test"
    assert t["tuned"]["pretrained"]["param"] == "C" and t["n_test"] == 120


def test_the_same_features_give_cant_tell_and_say_how_many_items_would_resolve_it():
    from featx.probe.verdict import paired_gain, transfer_verdict, _decide

    sets = _sets(np.random.default_rng(1), True)
    sets["random_init"] = sets["pretrained"]
    t = transfer_verdict("logreg", {}, sets)
    assert t["verdict"] == "inconclusive" and t["gain"] == 0 and t["ci_low"] == t["ci_high"] == 0
    rng = np.random.default_rng(2)  # a small true gain on few items: can't tell, and more items would resolve it
    a, b = rng.random(60) < 0.80, rng.random(60) < 0.72
    g = paired_gain(a, b)
    verdict, needed = _decide(g)
    assert verdict == "inconclusive" and g["ci_low"] < 0 < g["ci_high"] and needed > 60


def test_a_paired_interval_covers_the_true_gain():
    """Coverage of the 95% paired-bootstrap interval on simulated heads with a known gain of 0.05 (200 draws)."""
    from featx.probe import verdict

    rng = np.random.default_rng(3)
    covered = 0
    old = verdict.BOOTSTRAP
    verdict.BOOTSTRAP = 500
    try:
        for i in range(200):
            base = rng.random(300) < 0.7
            better = base | (rng.random(300) < 0.05 / 0.3)  # flips ~5% of items from wrong to right
            g = verdict.paired_gain(better, base, seed=i)
            truth = 0.05
            covered += g["ci_low"] <= truth <= g["ci_high"]
    finally:
        verdict.BOOTSTRAP = old
    assert 0.88 <= covered / 200 <= 0.99
