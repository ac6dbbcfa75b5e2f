"""Multi-label data and heads (issue 30): a manifest with a ``labels`` column extracts into a cache with a label
matrix; logreg / svm (one-vs-rest) and knn (label votes) fit on it with mAP, micro/macro F1 and per-label AP,
thresholds chosen on val; predict prints every label above its threshold; grid, export and export-model work;
commands for single-label data say so in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import CLASSES, TINY, draw, needs_fashion
from featx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def side_by_side(root, pictures, n: int, seed: int = 0):
    """``n`` images of one or two pictures side by side (``pictures(label, rng)`` draws one), and their manifest
    ``path,labels`` (the labels of both halves, ``;``-separated)."""
    rng = np.random.default_rng(seed)
    names = sorted(pictures.keys()) if isinstance(pictures, dict) else list(CLASSES)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,labels"]
    for i in range(n):
        picked = sorted(rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False))
        tiles = [pictures[names[c]](rng) if isinstance(pictures, dict) else draw(names[c], rng)
                 for c in rng.permutation(picked)]  # either side
        canvas = Image.new("RGB", (2 * tiles[0].width, tiles[0].height), (128, 128, 128))
        for j, t in enumerate(tiles):
            canvas.paste(t, (j * t.width, 0))
        canvas.save(root / f"img{i:03d}.png")
        lines.append(f"img{i:03d}.png,{';'.join(names[c] for c in picked)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv", lines[1:]


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ml")
    manifest, rows = side_by_side(tmp / "data", None, 90)
    cache = tmp / "ml.h5"
    out = run("-q", "extract", "--data", manifest, "--backbone", TINY, "--weights", "none", "--out", cache)
    assert out.exit_code == 0, out.output
    return cache, rows


def test_a_labels_column_makes_a_label_matrix(shapes_cache):
    from featx.cache.store import open_features

    cache, rows = shapes_cache
    fs = open_features(cache)
    assert fs.multilabel and fs.classes == CLASSES
    wanted = {r.split(",")[0]: set(r.split(",")[1].split(";")) for r in rows}
    for split in fs.splits:
        Y, ids = fs[split].Y, fs[split].ids
        assert Y.shape == (len(ids), 3) and (fs[split].y == -1).all()  # no single label
        for row, item in zip(Y, ids):
            assert {CLASSES[j] for j in np.flatnonzero(row)} == wanted[item]


def test_fit_predict_grid_and_export_on_a_multilabel_cache(shapes_cache, tmp_path):
    cache, rows = shapes_cache
    head = tmp_path / "h.skops"
    out = run("fit", cache, "--head", "logreg", "-o", head)
    assert out.exit_code == 0, out.output
    assert "mAP" in out.output and "micro_f1" in out.output and "thresholds (decision) chosen on val" in out.output
    card = json.loads(head.with_suffix(".json").read_text())
    test = card["metrics"]["test"]
    assert test["mAP"] > 0.7 and set(test["per_label_ap"]) <= set(CLASSES)
    assert len(card["multilabel"]["thresholds"]) == 3 and card["tuning"]["metric"] == "mAP"
    # predict: each image's labels at or above their thresholds, from the card inside the head
    images = [cache.parent / "data" / r.split(",")[0] for r in rows[:6]]
    pred = run("predict", "-F", head, *images, "-o", tmp_path / "p.json")
    assert pred.exit_code == 0, pred.output
    shown = {line.split("\t")[0]: line.split("\t")[1] for line in pred.stdout.splitlines() if "\t" in line}
    from featx.cache.store import open_features
    from featx.heads.multilabel import label_scores
    from featx.heads.persist import load_head

    est, card = load_head(head)
    fs = open_features(cache)
    rows_of = {i: (s, k) for s in fs.splits for k, i in enumerate(fs[s].ids)}
    for path in images:  # the labels whose score on the cached row reaches its threshold: nothing else, all of them
        split, k = rows_of[path.name]
        scores = label_scores(est, fs[split].X[k:k + 1])[0]
        expected = {CLASSES[j] for j in range(3) if scores[j] >= card["multilabel"]["thresholds"][j]}
        got = set() if shown[str(path)].startswith("(no") else {w.split(" ")[0] for w in shown[str(path)].split(", ")}
        assert got == expected, (path.name, shown[str(path)], scores)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert len(saved["predictions"] if isinstance(saved, dict) else saved) == 6
    for name in ("svm", "knn"):
        out = run("fit", cache, "--head", name, "--no-tune", "-o", tmp_path / f"{name}.skops")
        assert out.exit_code == 0 and "mAP" in out.output, out.output
    refused = run("fit", cache, "--head", "slda")
    assert refused.exit_code == 2 and "for a multi-label cache use logreg, svm, knn" in refused.output
    # grid: the heads searched by val mAP, a report for people and JSON for machines
    out = run("grid", cache, "--heads", "logreg knn", "--grid", "logreg.C=0.001,0.1", "--grid",
              "knn.n_neighbors=5,10", "--out", tmp_path / "g")
    assert out.exit_code == 0, out.output
    results = json.loads((tmp_path / "g" / "results.json").read_text())
    assert results["multilabel"] and results["best_head"] in ("logreg", "knn")
    other = ({"logreg", "knn"} - {results["best_head"]}).pop()  # the choice carries its interval and rule
    versus = results["choice"]["against"][other]
    assert versus["ci"][0] <= versus["gain"] <= versus["ci"][1] and versus["verdict"] in ("better", "can't tell")
    assert (versus["verdict"] == "better") == (versus["ci"][0] > 0) and f"against {other}: val mAP" in out.output
    assert all(len(h["sweep"]) == 2 * (1 if h["head"] == "logreg" else 2) for h in results["heads"])
    assert "test mAP" in (tmp_path / "g" / "report.md").read_text()
    merged = run("report", tmp_path / "g" / "results.json")  # featx report merges single-label searches: said
    assert merged.exit_code != 0 and "is a multi-label search" in merged.output and "KeyError" not in merged.output
    # export-model: the per-label decision values as one linear layer, the same scores as the head
    from featx.cache.store import open_features
    from featx.heads.export import linear_weights
    from featx.heads.multilabel import label_scores
    from featx.heads.persist import load_head

    est, _ = load_head(head)
    X = open_features(cache)["test"].X
    W, b = linear_weights(est)
    np.testing.assert_allclose(X @ W.T + b, label_scores(est, X), atol=1e-4)
    out = run("export-model", "-F", head, "-o", tmp_path / "m.pt2")
    assert out.exit_code == 0 and "output (N, 3) scores" in out.output, out.output
    # neighbours show each item's label set
    near = run("neighbors", cache, images[0], "-k", "1")
    assert near.exit_code == 0 and rows[0].split(",")[1] in near.output, near.output
    # the cache's export keeps the label sets
    out = run("export", cache, "--format", "npz", "-o", tmp_path / "c.npz")
    assert out.exit_code == 0
    with np.load(tmp_path / "c.npz") as z:
        assert z["train_Y"].shape[1] == 3


def test_single_label_commands_and_bad_manifests_say_so_in_one_line(shapes_cache, tmp_path):
    cache, _ = shapes_cache
    for args in (["audit", cache, "--out", tmp_path / "a"], ["adapt", cache, cache, "--out", tmp_path / "b"]):
        out = run(*args)
        assert out.exit_code == 2 and "is multi-label" in out.output and "Traceback" not in out.output, out.output
    bad = tmp_path / "bad"
    bad.mkdir()
    draw("circle", np.random.default_rng(0)).save(bad / "a.png")
    (bad / "m.csv").write_text("path,labels\na.png,circle;;square\n")
    out = run("extract", "--data", bad / "m.csv", "--backbone", TINY, "--weights", "none", "--out", tmp_path / "x.h5")
    assert out.exit_code != 0 and "an empty label" in out.output and "Traceback" not in out.output


@needs_fashion
def test_real_images_side_by_side(tmp_path):
    """Two Fashion-MNIST images side by side carry both labels: through the embedded MobileNetV2, logreg finds
    them far above chance (mAP), and predict names both garments of a pair it never saw."""
    import torchvision

    data = torchvision.datasets.FashionMNIST("cache/datasets", train=True)
    wanted = ("Trouser", "Bag", "Sneaker", "Dress")
    pools = {name: [i for i in range(3000) if data.classes[int(data.targets[i])] == name] for name in wanted}

    def picture(name):
        return lambda rng: data[int(rng.choice(pools[name]))][0].convert("RGB").resize((56, 56))

    manifest, rows = side_by_side(tmp_path / "pairs", {n: picture(n) for n in wanted}, 160)
    cache = tmp_path / "pairs.h5"
    out = run("-q", "extract", "--data", manifest, "--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
              "--out", cache)
    assert out.exit_code == 0, out.output
    head = tmp_path / "h.skops"
    out = run("fit", cache, "--head", "logreg", "-o", head)
    assert out.exit_code == 0, out.output
    card = json.loads(head.with_suffix(".json").read_text())
    assert card["metrics"]["test"]["mAP"] > 0.9, card["metrics"]["test"]
    rng, truth = np.random.default_rng(99), {}
    for k in range(10):  # pairs never seen: two garments each
        a, b = rng.choice(len(wanted), size=2, replace=False)
        pair = Image.new("RGB", (112, 56))
        pair.paste(picture(wanted[a])(rng), (0, 0))
        pair.paste(picture(wanted[b])(rng), (56, 0))
        pair.save(tmp_path / f"new{k}.png")
        truth[str(tmp_path / f"new{k}.png")] = {wanted[a], wanted[b]}
    pred = run("predict", "-F", head, *truth)
    assert pred.exit_code == 0, pred.output
    got = {line.split("\t")[0]: {w.split(" ")[0] for w in line.split("\t")[1].split(", ")}
           for line in pred.stdout.splitlines() if "\t" in line}
    exact = sum(got[p] == t for p, t in truth.items())
    assert exact >= 6, (exact, got)  # both labels and nothing else, for most pairs (chance: 1 in 15)


def test_a_label_absent_from_training_still_saves_and_loads(tmp_path):
    """A one-vs-rest head keeps scikit-learn's constant stand-in for a label never (or always) seen in training: a
    type featx must trust, or the head it saved could not be loaded."""
    import skops.io as sio

    from featx.heads.multilabel import label_scores, make_multilabel_head
    from featx.heads.persist import trusted_types

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(60, 5)), (rng.random((60, 3)) < 0.4).astype(int)
    Y[:, 2] = 0
    head = make_multilabel_head("logreg").fit(X, Y)
    sio.dump(head, tmp_path / "h.skops")
    assert not [t for t in sio.get_untrusted_types(file=tmp_path / "h.skops") if t not in trusted_types()]
    loaded = sio.load(tmp_path / "h.skops", trusted=sio.get_untrusted_types(file=tmp_path / "h.skops"))
    np.testing.assert_allclose(label_scores(loaded, X), label_scores(head, X))


def test_a_multilabel_source_is_not_sharded(shapes_cache, tiny_backbone, tmp_path):
    """Sharded caches are joined without label matrices: a multi-label source is refused before any work."""
    from featx.data.files import ManifestSource
    from featx.errors import FeatxUsageError
    from featx.extract import extract

    cache, _ = shapes_cache
    source = ManifestSource(cache.parent / "data" / "labels.csv")
    with pytest.raises(FeatxUsageError, match="extracted by one process"):
        extract(source, tiny_backbone, out=tmp_path / "s.h5", progress=False, shard=(0, 2))
    assert not list(tmp_path.glob("s*.h5*"))
