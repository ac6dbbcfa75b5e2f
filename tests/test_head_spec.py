"""Adding a head is one declaration: a HeadSpec registered here, in the test alone, works in every command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import TINY
from featx.cli import main
from featx.heads.registry import HEADS, HeadSpec, register_head


def _pca_ridge():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("pca", PCA(n_components=500, random_state=0)),
                     ("clf", RidgeClassifier(alpha=1.0))])


@pytest.fixture
def pca_ridge():
    spec = register_head(HeadSpec(
        "pca-ridge", _pca_ridge, "PCA then a ridge classifier (a head declared in a test)", ("alpha",),
        grid=lambda dim: {"alpha": (0.1, 10.0), "pca__n_components": (dim // 64, 500)},
        row_bound=("pca__n_components",)))
    yield spec
    HEADS.pop(spec.name)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def cache(tmp_path, image_folder):
    result = run("-q", "extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--cache-dir",
                 tmp_path / "cache", "--no-progress")
    assert result.exit_code == 0, result.output
    return next((tmp_path / "cache").rglob("*.h5"))


def test_a_registered_head_works_everywhere(pca_ridge, cache, image_folder, tmp_path):
    assert pca_ridge.defaults()["alpha"] == 1.0
    with pytest.raises(ValueError, match="already registered"):
        register_head(pca_ridge)
    listed = run("heads")
    assert listed.exit_code == 0 and "pca-ridge" in listed.stdout and "declared in a test" in listed.stdout

    fit = run("fit", cache, "--head", "pca-ridge", "--param", "alpha=3", "--no-baselines", "--out",
              tmp_path / "h.skops")
    assert fit.exit_code == 0, fit.output
    card = json.loads((tmp_path / "h.json").read_text())
    # 500 components cannot come from the few training rows: lowered to them, and the card says so
    assert card["head"] == "pca-ridge" and card["params"]["alpha"] == 3 and card["params"]["pca__n_components"] < 500
    predicted = run("predict", "-F", tmp_path / "h.skops", next(image_folder.rglob("*.png")))
    assert predicted.exit_code == 0, predicted.output

    grid = run("grid", cache, "--heads", "pca-ridge", "--no-baselines", "--out", tmp_path / "report", "--jobs", "1",
               "--no-progress")
    assert grid.exit_code == 0, grid.output
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    (head,) = results["heads"]
    # the grid was scaled to the cache's dimension (1024 // 64) and its row-bound value clipped to the rows
    assert head["grid"]["alpha"] == [0.1, 10.0] and head["grid"]["pca__n_components"][0] == 1024 // 64
    assert max(head["grid"]["pca__n_components"]) < 500
