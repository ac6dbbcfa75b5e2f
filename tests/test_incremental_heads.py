"""Streaming heads (issue 30): slda and ncm learn new rows and new classes without their old rows; a head updated
group by group equals the head fitted on all the rows at once, and ``featx fit --update`` does it from the command
line with the update recorded in the card."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CLASSES, TINY, draw
from featx.cli import main
from featx.heads.incremental import partial_fit_head
from featx.heads.registry import make_head


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("name", ["slda", "ncm"])
def test_updated_group_by_group_equals_fitted_at_once(name):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 20)) * 2
    y = rng.integers(0, 6, 600)
    X = centres[y] + rng.normal(size=(600, 20))
    stream = make_head(name)
    for group in ([0, 1], [2, 3], [4, 5]):  # classes arrive in groups, each group in two batches
        rows = np.flatnonzero(np.isin(y, group))
        for part in np.array_split(rows, 2):
            partial_fit_head(stream, X[part], y[part])
        seen = np.isin(y, group[-1:] + list(range(group[-1])))
        assert set(stream.predict(X)) <= set(range(group[-1] + 1))  # only the classes seen so far
        assert np.mean(stream.predict(X[seen]) == y[seen]) > 0.9
    at_once = make_head(name).fit(X, y)
    np.testing.assert_allclose(stream[-1].coef_, at_once[-1].coef_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stream[-1].intercept_, at_once[-1].intercept_, rtol=1e-9, atol=1e-9)
    assert (stream.predict(X) == at_once.predict(X)).all()
    proba = stream.predict_proba(X[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_a_class_named_before_its_rows_is_never_predicted():
    from featx.heads.incremental import StreamingLDA

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 5)), np.repeat([0, 1], 20)
    head = StreamingLDA().partial_fit(X, y, classes=[0, 1, 2])
    assert list(head.classes_) == [0, 1, 2] and 2 not in set(head.predict(X))
    with pytest.raises(ValueError, match="shrinkage"):
        StreamingLDA(shrinkage=0).fit(X, y)


def _folder(root, classes, seed):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(12):
            draw(c, rng).save(root / c / f"{c}_{seed}_{i:02d}.png")
    return root


def test_fit_update_adds_rows_and_classes_from_another_cache(tmp_path):
    first = _folder(tmp_path / "a", CLASSES[:2], seed=0)
    later = _folder(tmp_path / "b", CLASSES[1:], seed=1)  # one class known, one new
    caches = {}
    for name, root in (("a", first), ("b", later)):
        caches[name] = tmp_path / f"{name}.h5"
        assert run("-q", "extract", "--data", root, "--backbone", TINY, "--weights", "none", "--out",
                   caches[name]).exit_code == 0
    head = tmp_path / "a.slda.skops"
    assert run("fit", caches["a"], "--head", "slda", "--no-baselines", "-o", head).exit_code == 0
    out = run("fit", "--update", head, caches["b"])
    assert out.exit_code == 0, out.output
    assert f"new classes: {CLASSES[2]}" in out.output and "the head it came from is unchanged" in out.output
    updated = tmp_path / "b.slda.skops"
    card = json.loads(updated.with_suffix(".json").read_text())
    assert card["classes"] == list(CLASSES) and card["updates"][0]["new_classes"] == [CLASSES[2]]
    assert card["n_train"] == json.loads(head.with_suffix(".json").read_text())["n_train"] + card["updates"][0]["rows"]
    # the same as one head fitted on the rows of both caches at once (labels by name)
    from featx.cache.store import open_features
    from featx.heads.persist import load_head

    est, _ = load_head(updated)
    parts = []
    for name in ("a", "b"):
        fs = open_features(caches[name])
        X, y = fs["train"].labelled()
        parts.append((X, np.array([CLASSES.index(fs.classes[i]) for i in y])))
    params = json.loads(head.with_suffix(".json").read_text())["params"]
    at_once = make_head("slda", {"shrinkage": params["shrinkage"]}).fit(np.concatenate([p[0] for p in parts]),
                                                                      np.concatenate([p[1] for p in parts]))
    X_all = np.concatenate([p[0] for p in parts])
    np.testing.assert_allclose(est[-1].coef_, at_once[-1].coef_, rtol=1e-4)  # float tolerance (an ill-conditioned
    assert (est.predict(X_all) == at_once.predict(X_all)).all()              # covariance: random-init features)
    np.testing.assert_allclose(est.predict_proba(X_all), at_once.predict_proba(X_all), atol=1e-6)
    # --retune: the shrinkage chosen again on the update cache's val rows, from the statistics alone
    out = run("fit", "--update", head, caches["b"], "--retune", "-o", tmp_path / "re.skops")
    assert out.exit_code == 0 and "shrinkage re-tuned on" in out.output, out.output
    entry = json.loads((tmp_path / "re.json").read_text())["updates"][0]
    assert entry["shrinkage"]["from"] == params["shrinkage"] and "val rows of b.h5" in entry["shrinkage"]["on"]
    # predict names the new class
    picture = tmp_path / "new.png"
    shutil.copy(next((later / CLASSES[2]).iterdir()), picture)
    pred = run("predict", "--head-file", updated, picture, "--top-k", "3")
    assert pred.exit_code == 0 and CLASSES[2] in pred.output, pred.output


def test_fit_update_refuses_what_it_cannot_do(tmp_path, image_folder):
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--out",
               cache).exit_code == 0
    logreg = tmp_path / "c.logreg.skops"
    assert run("fit", cache, "--head", "logreg", "--no-baselines", "--no-tune", "-o", logreg).exit_code == 0
    out = run("fit", "--update", logreg, cache)
    assert out.exit_code == 2 and "streaming heads (slda, ncm)" in out.output
    ncm = tmp_path / "c.ncm.skops"
    assert run("fit", cache, "--head", "ncm", "--no-baselines", "-o", ncm).exit_code == 0
    out = run("fit", "--update", ncm, cache, "-o", ncm)  # never over the head it reads
    assert out.exit_code == 2 and "would destroy it" in out.output
    other = tmp_path / "other.h5"  # other features: another backbone
    assert run("-q", "extract", "--data", image_folder, "--backbone", "mobilenet_v2", "--weights", "none",
               "--out", other).exit_code == 0
    out = run("fit", "--update", ncm, other)
    assert out.exit_code == 2 and "other features" in out.output
    out = run("fit", "--update", ncm, cache, "--param", "C=1")
    assert out.exit_code == 2 and "keeps the head's parameters" in out.output
    out = run("fit", "--update", ncm, cache, "--retune", "-o", tmp_path / "n2.skops")
    assert out.exit_code == 2 and "--retune is for the slda head" in out.output
    out = run("fit", cache, "--head", "slda", "--retune")
    assert out.exit_code == 2 and "--retune is for --update" in out.output


def test_streaming_heads_export_and_the_suffix_names_the_format(tmp_path, image_folder):
    """export-model folds slda/ncm like any linear head; ``-o m.onnx`` writes ONNX (it wrote a torch.export program
    under that name unless --format onnx was given), and a suffix that contradicts --format is refused."""
    ort = pytest.importorskip("onnxruntime")
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--out",
               cache).exit_code == 0
    head = tmp_path / "c.slda.skops"
    assert run("fit", cache, "--head", "slda", "--no-baselines", "-o", head).exit_code == 0
    out = run("export-model", "-F", head, "-o", tmp_path / "m.onnx")
    assert out.exit_code == 0 and "onnxruntime.InferenceSession" in out.output, out.output
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    scores = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert scores.shape == (2, len(CLASSES))
    bad = run("export-model", "-F", head, "-o", tmp_path / "m2.onnx", "--format", "torchscript")
    assert bad.exit_code == 2 and "make them agree" in bad.output
