"""Reuse and deployment: reading caches from other code, predicting on new images, neighbours, export."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY
from featx import FeatxError, open_features
from featx.cli import main
from featx.extract import extract
from featx.heads.persist import load_head
from featx.heads.export import linear_weights
from featx.data.decoding import open_image
from featx.data.files import ImageFolderSource


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def cache_and_heads(image_folder, tiny_backbone, tmp_path, monkeypatch):
    """A cache of 36 images and three heads; the calibration guards are lowered so that the temperature is fitted
    on its 3-4 val rows (``test_calibration_is_skipped_where_val_cannot_support_it`` keeps them)."""
    import featx.probe.calibration

    monkeypatch.setattr(featx.probe.calibration, "MIN_VAL_ROWS", 1)
    monkeypatch.setattr(featx.probe.calibration, "MIN_VAL_ERRORS", 0)
    monkeypatch.setattr(featx.probe.calibration, "TEMPERATURE_BOUNDS", (1e-3, 1e3))
    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    heads = {}
    for name in ("logreg", "svm", "knn"):
        heads[name] = tmp_path / f"{name}.skops"
        result = run("fit", cache, "--head", name, "--out", heads[name])
        assert result.exit_code == 0, result.output
    return cache, heads


def test_cache_reads_as_ranges_torch_and_a_dataloader_with_workers(cache_and_heads):
    cache, _ = cache_and_heads
    view = open_features(cache)["train"]
    X = view.X
    np.testing.assert_array_equal(view[5:9], X[5:9])
    np.testing.assert_array_equal(view[[1, 3]], X[[1, 3]])
    np.testing.assert_array_equal(view[[7, 2, 7]], X[[7, 2, 7]])  # any order, repeats
    assert torch.equal(view.torch(2, 4), torch.from_numpy(X[2:4]))
    assert view.classes == open_features(cache).classes == ("circle", "square", "stripes")
    loader = torch.utils.data.DataLoader(view.dataset(), batch_size=5, shuffle=True, num_workers=2)
    rows, labels = zip(*[(x, y) for x, y in loader])
    got = torch.cat(rows).numpy()
    assert got.shape == X.shape
    assert sorted(r.tobytes() for r in got) == sorted(r.tobytes() for r in X), "every row exactly once"
    assert sorted(torch.cat(labels).tolist()) == sorted(view.y.tolist())


def test_export_npz_and_npy_round_trip_parquet_says_when_missing(cache_and_heads, tmp_path):
    cache, _ = cache_and_heads
    fs = open_features(cache)
    assert run("export", cache, "--format", "npz", "--out", tmp_path / "c.npz").exit_code == 0
    z = np.load(tmp_path / "c.npz")
    for s in fs.splits:
        np.testing.assert_array_equal(z[f"{s}_X"], fs[s].X)
        np.testing.assert_array_equal(z[f"{s}_y"], fs[s].y)
        assert list(z[f"{s}_ids"]) == list(fs[s].ids)
    assert list(z["classes"]) == list(fs.classes)
    assert run("export", cache, "--format", "npy", "--out", tmp_path / "npy").exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "test_X.npy"), fs["test"].X)
    assert json.loads((tmp_path / "npy" / "classes.json").read_text()) == list(fs.classes)
    result = run("export", cache, "--format", "parquet", "--out", tmp_path / "c.parquet")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert result.exit_code == 1 and "needs pyarrow" in result.stderr
    else:
        table = pq.read_table(tmp_path / "c.parquet")
        assert table.num_rows == sum(len(fs[s]) for s in fs.splits)
        import pandas as pd

        frame = pd.read_parquet(tmp_path / "c.parquet")
        rows = frame[frame["split"] == "test"]
        np.testing.assert_array_equal(np.stack(rows["features"].to_numpy()), fs["test"].X)
        assert list(rows["id"]) == list(fs["test"].ids)  # pandas reads it


def test_export_lance_loads_in_lance_and_is_replaced_only_by_itself(cache_and_heads, tmp_path):
    lance = pytest.importorskip("lance")
    cache, _ = cache_and_heads
    fs = open_features(cache)
    out = tmp_path / "c.lance"
    for _ in range(2):  # a second export replaces the first
        result = run("export", cache, "--format", "lance", "--out", out)
        assert result.exit_code == 0, result.output
    table = lance.dataset(str(out)).to_table()
    assert table.num_rows == sum(len(fs[s]) for s in fs.splits)
    test = [r for r in table.to_pylist() if r["split"] == "test"]
    np.testing.assert_allclose(np.array([r["features"] for r in test]), fs["test"].X)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = run("export", cache, "--format", "lance", "--out", other)
    assert refused.exit_code == 2 and (other / "keep.txt").read_text() == "mine"


def _test_images(cache, image_folder):
    fs = open_features(cache)
    ids = list(fs["test"].ids)
    return fs, ids, [str(image_folder / i) for i in ids]


def test_predict_matches_the_head_on_cached_features_and_reports_unreadable(cache_and_heads, image_folder, tmp_path):
    cache, heads = cache_and_heads
    fs, ids, paths = _test_images(cache, image_folder)
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    out = tmp_path / "pred.csv"
    result = run("predict", "--head-file", heads["logreg"], *paths, bad, "-k", "2", "--output", out)
    assert result.exit_code == 0, result.output
    assert "skipped unreadable image" in result.stderr and "broken.jpg" in result.stderr
    head, _ = load_head(heads["logreg"])
    expected = [fs.classes[c] for c in head.predict(fs["test"].X)]
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    top1 = [r["label"] for r in rows if r["rank"] == "1"]
    assert top1 == expected, "same backbone, transform and head as the cache: same predictions"
    probs = [float(r["calibrated_probability"]) for r in rows if r["rank"] == "1"]  # its card has a temperature
    assert all(0 < p <= 1 for p in probs)
    assert any(r.get("error") for r in rows), "the unreadable image is in the output too"
    # an SVM has no probabilities: its scores temperature-scaled (fitted on val), or, without that, decision scores
    result = run("predict", "--head-file", heads["svm"], image_folder / "circle", "--output", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["kind"] == "calibrated probability" and len(doc["predictions"]) == 12
    # the card beside a head is a copy: an edit there changes no prediction (the card inside the head decides)
    card_file = heads["svm"].with_suffix(".json")
    card_file.write_text(json.dumps({k: v for k, v in json.loads(card_file.read_text()).items() if k != "calibration"}))
    edited = run("predict", "--head-file", heads["svm"], image_folder / "circle", "--output", tmp_path / "p.json")
    assert edited.exit_code == 0 and "uses the card inside the head" in edited.stderr
    assert json.loads((tmp_path / "p.json").read_text())["kind"] == "calibrated probability"


def _rewrite_card_inside(head, change) -> None:
    """Rewrite the card saved inside a head file (what a hand-edited or crafted head would hold)."""
    import zipfile

    from featx.heads.persist import CARD_ENTRY

    with zipfile.ZipFile(head) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    card = json.loads(entries[CARD_ENTRY])
    change(card)
    entries[CARD_ENTRY] = json.dumps(card).encode()
    with zipfile.ZipFile(head, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def test_predict_refuses_a_changed_head_and_a_missing_backbone(cache_and_heads, image_folder, tmp_path):
    import shutil

    cache, heads = cache_and_heads
    other = shutil.copy(heads["logreg"], tmp_path / "other.skops")

    def elsewhere(card):
        card["embedding"]["backbone"] = "resnet18"  # not the backbone the features came from
        card["embedding"]["transform"] = {"input_size": [3, 9, 9]}

    _rewrite_card_inside(other, elsewhere)
    result = run("predict", "--head-file", other, image_folder / "circle")
    assert result.exit_code == 1 and "not the one the embeddings were made with: the transform differs" in result.stderr
    torn = tmp_path / "torn.skops"
    torn.write_bytes(heads["svm"].read_bytes()[:-200])
    result = run("predict", "--head-file", torn, image_folder / "circle")
    assert result.exit_code == 1 and "not a readable skops file" in result.stderr and "Traceback" not in result.output


def test_neighbors_of_a_cached_image_start_with_itself(cache_and_heads, image_folder):
    cache, _ = cache_and_heads
    fs, ids, paths = _test_images(cache, image_folder)
    result = run("neighbors", cache, paths[0], "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == paths[0] and len(lines) == 4
    first = lines[1].split()
    assert first[0] == "1." and float(first[1]) > 0.9999 and first[3] == ids[0]


def _run_exported(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    """Scores from an exported model, loaded with its own runtime (no featx)."""
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x.numpy()})[0]
    module = torch.export.load(str(path)).module() if fmt == "export" else torch.jit.load(str(path))
    with torch.no_grad():
        return module(x).numpy()


@pytest.mark.parametrize("fmt", ["export", "onnx", "torchscript"])
def test_exported_model_predicts_what_featx_predict_says(cache_and_heads, image_folder, tmp_path, tiny_backbone,
                                                         fmt):
    cache, heads = cache_and_heads
    fs, ids, paths = _test_images(cache, image_folder)
    name = "svm" if fmt == "torchscript" else "logreg"
    if fmt == "onnx" and importlib.util.find_spec("onnxscript") is None:
        result = run("export-model", "--head-file", heads[name], "--format", "onnx", "--out", tmp_path / "m.onnx")
        assert result.exit_code == 1 and "pip install 'featx[onnx]'" in result.stderr
        return
    result = run("export-model", "--head-file", heads[name], "--format", fmt)
    assert result.exit_code == 0, result.output
    assert "Expect archive file to be a file ending in .pt2" not in result.output  # torch's raw warning, gone
    out = heads[name].with_suffix({"export": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}[fmt])
    assert out.exists() and "load it with" in result.output
    assert sorted(p.name for p in out.parent.glob(out.name + "*")) == [out.name], "no side file to lose"
    shipped = tmp_path / "shipped"  # what users do: copy the model file alone
    shipped.mkdir()
    out = Path(shutil.move(out, shipped / out.name))
    assert run("predict", "--head-file", heads[name], *paths, "--out", tmp_path / "p.json").exit_code == 0
    featx_says = [p["labels"][0] for p in json.loads((tmp_path / "p.json").read_text())["predictions"]]
    x = torch.stack([tiny_backbone.transform(open_image(p)) for p in paths])  # any batch size: N = len(paths)
    scores = _run_exported(out, fmt, x)
    head, card = load_head(heads[name])
    assert [card["classes"][i] for i in scores.argmax(1)] == featx_says
    W, b = linear_weights(head)
    np.testing.assert_allclose(fs["test"].X @ W.T + b, head.decision_function(fs["test"].X), rtol=1e-3, atol=1e-3)


def test_export_model_refuses_heads_that_are_not_linear(cache_and_heads, tmp_path):
    _, heads = cache_and_heads
    knn = run("export-model", "--head-file", heads["knn"], "--out", tmp_path / "k.pt2")
    assert knn.exit_code == 1 and "only linear heads" in knn.stderr


def test_linear_weights_refuses_nonlinear_heads():
    from featx.heads.registry import make_head

    with pytest.raises(FeatxError, match="only linear heads"):
        linear_weights(make_head("rbf-svm"))


def test_predict_with_a_head_trained_on_an_in_memory_dataset(fashion_cache, image_folder, tmp_path):
    """A cache of a dataset without files (decoder 'in-memory') embeds new image files the exact way."""
    from click.testing import CliRunner

    from featx.cli import main

    head = tmp_path / "h.skops"
    assert CliRunner().invoke(main, ["fit", str(fashion_cache), "--head", "logreg", "--out", str(head)]).exit_code == 0
    result = CliRunner().invoke(main, ["predict", "--head-file", str(head), str(image_folder / "circle"), "-k", "2"])
    assert result.exit_code == 0, result.output
    assert "12 predicted, 0 unreadable" in result.stderr


def test_temperature_scaling_is_fitted_on_val_recorded_and_applied_by_predict(cache_and_heads, image_folder, tmp_path):
    from featx.probe.calibration import calibrate, decision_scores, fit_temperature

    cache, heads = cache_and_heads
    card = json.loads(heads["svm"].with_suffix(".json").read_text())
    cal = card["calibration"]
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0 and {"test_ece", "test_ece_calibrated"} <= set(cal)
    assert "calibration" not in json.loads(heads["knn"].with_suffix(".json").read_text())  # no scores to scale
    fs, ids, paths = _test_images(cache, image_folder)
    assert run("predict", "--head-file", heads["svm"], *paths, "--out", tmp_path / "p.json").exit_code == 0
    preds = json.loads((tmp_path / "p.json").read_text())
    assert preds["kind"] == "calibrated probability"
    head, _ = load_head(heads["svm"])
    expected = calibrate(decision_scores(head, fs["test"].X), cal["temperature"]).max(axis=1)
    got = [p["scores"][0] for p in preds["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert run("predict", "--head-file", heads["svm"], *paths, "--out", tmp_path / "p.csv").exit_code == 0
    old = run("predict", "-H", heads["svm"], *paths)  # the old spelling of --head-file: works, with a note
    assert old.exit_code == 0 and "say --head-file/-F" in old.stderr
    assert "calibrated_probability" in (tmp_path / "p.csv").read_text().splitlines()[0]


def test_calibration_is_skipped_where_val_cannot_support_it(image_folder, tiny_backbone, tmp_path):
    """3-4 val rows: no temperature (it would be fitted on nothing); the card says why, predict prints the raw
    scores with a note, never a manufactured 1.000."""
    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    fitted = run("fit", cache, "--head", "svm", "--no-baselines", "--out", tmp_path / "svm.skops")
    assert fitted.exit_code == 0 and "calibration: skipped, only" in fitted.stdout
    cal = json.loads((tmp_path / "svm.json").read_text())["calibration"]
    assert "temperature" not in cal and "labelled val rows" in cal["skipped"] and cal["val_rows"] < 50
    result = run("predict", "--head-file", tmp_path / "svm.skops", image_folder / "circle", "--output",
                 tmp_path / "p.json")
    assert result.exit_code == 0 and "scores are not calibrated: only" in result.stderr
    assert json.loads((tmp_path / "p.json").read_text())["kind"] == "decision score"


def test_a_head_without_val_errors_gets_no_temperature():
    """A head right on every val row would get T -> 0 (every probability 1.000): refused with the reason."""
    from featx.probe.calibration import MIN_VAL_ERRORS, guarded_temperature
    from featx.heads.registry import make_head

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    X = np.eye(3)[y] * 5 + rng.normal(0, 0.1, (len(y), 3))
    head = make_head("logreg").fit(X, y)
    skipped = guarded_temperature(head, X, y)
    assert skipped["val_errors"] < MIN_VAL_ERRORS and "too few errors" in skipped["skipped"]
    noisy = X + rng.normal(0, 3, X.shape)  # real errors: a temperature within the bounds
    fitted = guarded_temperature(head, noisy, y)
    assert fitted["val_errors"] >= MIN_VAL_ERRORS and 0.05 <= fitted["temperature"] <= 20


def test_temperature_undoes_a_known_overconfidence():
    """Scores that are 4x too sharp (the true model is softmax(z)) get T close to 4."""
    from featx.probe.calibration import fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5)) * 2
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert abs(fit_temperature(4 * z, y) - 4) < 0.3
    assert abs(fit_temperature(z, y) - 1) < 0.1
