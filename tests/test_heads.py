"""Heads: each fits and predicts on small real features; the torch head is a real sklearn estimator."""

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import needs_fashion
from featx import FeatxError, open_features
from featx.probe.evaluate import evaluate
from featx.heads.registry import HEADS, make_head, parse_params, trained_heads
from featx.heads.solvers import LBFGSLinearClassifier, TorchLinearClassifier


@needs_fashion
@pytest.mark.parametrize("name", trained_heads())
def test_each_head_learns_fashion_mnist_from_real_features(name, fashion_cache, tmp_path):
    fs = open_features(fashion_cache)
    # 100 training rows: fewer Nystroem landmarks than rows
    head = make_head(name, {"kmap__n_components": 64} if name == "rbf-svm" else None)
    assert head.fit(fs["train"].X, fs["train"].y) is head
    m = evaluate(head, fs["test"].X, fs["test"].y)
    # 10 classes, 100 training images: chance is 0.10; every head must be far above it.
    assert m["top1"] > 0.5, m
    assert m["top5"] >= m["top1"] and 0 < m["mean_per_class"] <= 1 and 0 < m["macro_f1"] <= 1
    # A saved head predicts the same after loading.
    joblib.dump(head, tmp_path / "h.joblib")
    again = joblib.load(tmp_path / "h.joblib")
    np.testing.assert_array_equal(again.predict(fs["val"].X), head.predict(fs["val"].X))


def test_param_overrides_reach_the_classifier_step():
    head = make_head("svm", parse_params(["C=0.5", "class_weight=balanced", "scale__with_mean=False"]))
    p = head.get_params()
    assert p["clf__C"] == 0.5 and p["clf__class_weight"] == "balanced"
    assert p["scale__with_mean"] is False
    assert make_head("logreg", {"C": 2.0}).get_params()["clf__C"] == 2.0
    assert make_head("svm", {"clf__C": 3.0}).get_params()["clf__C"] == 3.0
    assert make_head("rbf-svm", {"kmap__gamma": 0.1}).get_params()["kmap__gamma"] == 0.1


@pytest.mark.parametrize("params,message", [
    ({"gamma": 1}, "head svm has no parameter 'gamma'"),
    ({"nosuch__x": 1}, "has no parameter 'nosuch__x'"),
])
def test_unknown_parameter_is_one_clear_error(params, message):
    with pytest.raises(FeatxError, match=message):
        make_head("svm", params)


def test_unknown_head_and_malformed_param():
    with pytest.raises(FeatxError, match="unknown head 'mlp'.*logreg"):
        make_head("mlp")
    with pytest.raises(FeatxError, match="not NAME=VALUE"):
        parse_params(["C"])
    assert parse_params(["C=1e-3", "k=5", "metric=cosine", "flag=True"]) == {
        "C": 1e-3, "k": 5, "metric": "cosine", "flag": True}


@parametrize_with_checks([
    TorchLinearClassifier(lr=0.05, epochs=40, batch_size=32),
    LBFGSLinearClassifier(loss="log_loss"),
    LBFGSLinearClassifier(loss="squared_hinge"),
])
def test_torch_heads_pass_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _blobs(n_classes=5, d=12, per_class=40, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = (rng.normal(size=(n_classes, d))[y] * spread + rng.normal(size=(len(y), d))).astype(np.float32)
    return X, y


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_lbfgs_logistic_regression_is_sklearns_model(C):
    """Same objective as LogisticRegression: same coefficients, probabilities and predictions."""
    from sklearn.linear_model import LogisticRegression

    X, y = _blobs()
    ours = LBFGSLinearClassifier(loss="log_loss", C=C, tol=1e-6, max_iter=1000).fit(X, y)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=2e-3 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=2e-3)
    assert (ours.predict(X) == ref.predict(X)).mean() > 0.99


@needs_fashion
def test_logreg_head_probabilities_are_converged_on_real_features(fashion_cache):
    """The `logreg` head as featx builds it (default tol) against scikit-learn converged (tol=1e-6), on real
    MobileNetV2 features of Fashion-MNIST, across the grid's C range: probabilities within 0.02 wherever
    scikit-learn's own solution is settled (its tol=1e-6 and tol=1e-10 agree within 0.01). On these 100
    separable rows it is not from C ~ 50 up (they differ by 0.13-0.15: the optimum runs off to infinity and
    any two solvers stop at different points of that ray)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from featx.heads.registry import LOGREG_C_GRID

    fs = open_features(fashion_cache)
    X, y = fs["train"].labelled()
    Xt = fs["test"].X
    scaler = StandardScaler().fit(X.astype(np.float64))  # a float64 reference: on float32 input scikit-learn's
    X64, Xt64 = scaler.transform(X.astype(np.float64)), scaler.transform(Xt.astype(np.float64))  # stops short
    worst = {}
    for C in LOGREG_C_GRID[::4]:  # 12 of the 45 points, 1e-6 .. 1e5
        ref = LogisticRegression(C=C, tol=1e-6, max_iter=20000).fit(X64, y)
        p_ref = ref.predict_proba(Xt64)
        tighter = LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(X64, y) if C > 1 else ref
        if np.abs(p_ref - tighter.predict_proba(Xt64)).max() > 0.01:
            continue  # no settled reference to compare with
        ours = make_head("logreg", {"C": C}).fit(X, y)
        worst[C] = float(np.abs(ours.predict_proba(Xt) - p_ref).max())
    assert min(worst) <= 1e-6 and max(worst) >= 10, worst  # the settled range spans the useful C values
    assert max(worst.values()) <= 0.02, worst


def test_lbfgs_squared_hinge_is_linear_svc():
    """One-vs-rest squared hinge: the same separating hyperplanes as LinearSVC (whose intercept is
    also penalised, hence a loose tolerance)."""
    from sklearn.svm import LinearSVC

    X, y = _blobs()
    ours = LBFGSLinearClassifier(loss="squared_hinge", C=0.1, tol=1e-6, max_iter=1000).fit(X, y)
    ref = LinearSVC(C=0.1, dual=False, tol=1e-8, intercept_scaling=100).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=0.02 * np.abs(ref.coef_).max())
    assert (ours.predict(X) == ref.predict(X)).mean() > 0.98
    assert not hasattr(ours, "predict_proba")  # like LinearSVC: scores, no probabilities
    assert ours.decision_function(X).shape == (len(y), 5)


def test_lbfgs_warm_start_and_class_weight():
    X, y = _blobs()
    cold = LBFGSLinearClassifier(C=1.0, tol=1e-5).fit(X, y)
    warm = LBFGSLinearClassifier(C=0.5, tol=1e-5, warm_start=True).fit(X, y)
    warm.set_params(C=1.0).fit(X, y)
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=0.05 * np.abs(cold.coef_).max())
    # With a heavy weight on class 0, more points are called class 0.
    plain = LBFGSLinearClassifier(C=0.01).fit(X, y)
    heavy = LBFGSLinearClassifier(C=0.01, class_weight={0: 50.0}).fit(X, y)
    assert (heavy.predict(X) == 0).sum() > (plain.predict(X) == 0).sum()
    balanced = LBFGSLinearClassifier(C=0.01, class_weight="balanced").fit(X[40:], y[40:])
    assert list(balanced.classes_) == [1, 2, 3, 4]


def test_torch_linear_clones_grid_searches_and_separates_classes():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 3
    y = np.repeat(np.arange(4), 40)
    X = (centers[y] + rng.normal(size=(160, 16))).astype(np.float32)
    est = TorchLinearClassifier(epochs=20, batch_size=32)
    assert clone(est).get_params() == est.get_params()
    search = GridSearchCV(est, {"lr": [1e-3, 1e-2]}, cv=2).fit(X, y)
    assert search.best_score_ > 0.9
    proba = search.best_estimator_.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert search.best_estimator_.coef_.shape == (4, 16)
    # Deterministic for a fixed random_state.
    a = TorchLinearClassifier(epochs=3).fit(X, y).coef_
    b = TorchLinearClassifier(epochs=3).fit(X, y).coef_
    np.testing.assert_array_equal(a, b)


def test_fit_tunes_the_main_parameter_on_val_unless_it_is_pinned(image_folder, tiny_backbone, tmp_path):
    """featx fit chooses C (here by 3-fold CV: the fixture's val split is tiny but present) over the head's grid,
    records how in the card; --param C=... or --no-tune keeps the value as given."""
    import json

    from click.testing import CliRunner

    from featx.cli import main
    from featx.data.files import ImageFolderSource
    from featx.extract import extract
    from featx.heads.registry import LINEAR_SVM_C_GRID

    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    run = lambda *a: CliRunner().invoke(main, ["fit", str(cache), "--no-baselines", *map(str, a)])  # noqa: E731
    tuned = run("--head", "svm", "--out", tmp_path / "t.skops")
    assert tuned.exit_code == 0, tuned.output
    card = json.loads((tmp_path / "t.json").read_text())
    t = card["tuning"]
    assert t["param"] == "C" and t["chosen"] in LINEAR_SVM_C_GRID and t["selection"] in ("val", "3-fold CV")
    assert card["params"]["C"] == t["chosen"] and f"tuned C on {t['selection']}" in tuned.stdout
    pinned = run("--head", "svm", "--param", "C=0.5", "--out", tmp_path / "p.skops")
    assert pinned.exit_code == 0 and "tuned" not in pinned.stdout
    card = json.loads((tmp_path / "p.json").read_text())
    assert card["params"]["C"] == 0.5 and "tuning" not in card
    plain = run("--head", "svm", "--no-tune", "--out", tmp_path / "n.skops")
    assert plain.exit_code == 0 and "tuning" not in json.loads((tmp_path / "n.json").read_text())
