"""Extraction: resume after interruption, cache reuse by key, skips, equality with torchvision."""

import numpy as np
import pytest
import torch
import torchvision

from conftest import TINY, draw, needs_fashion
from featx import FeatxError, open_features
from featx.extract import extract
from featx.data.files import ImageFolderSource
from featx.cache.store import partial_path


class InterruptedSource(ImageFolderSource):
    """An image folder whose ``fail_at``-th image load is interrupted (Ctrl-C)."""

    def __init__(self, root, fail_at, **kw):
        super().__init__(root, **kw)
        self.fail_at, self.calls = fail_at, 0

    def open(self, key):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return super().open(key)


def _all(path):
    fs = open_features(path)
    return {s: (fs[s].X, fs[s].y, list(fs[s].ids)) for s in fs.splits}


@pytest.mark.parametrize("fail_at", [7, 30])  # in the middle of train; in the middle of a later split
def test_resume_after_interruption_equals_uninterrupted_run(image_folder, tiny_backbone, tmp_path, fail_at):
    whole = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "whole.h5",
                    batch_size=4, progress=False)
    out = tmp_path / "resumed.h5"
    with pytest.raises(FeatxError, match="interrupted after .* the next run resumes"):
        extract(InterruptedSource(image_folder, fail_at), tiny_backbone, out=out, batch_size=4, progress=False,
                reuse="none")  # embedded, not copied from whole.h5 beside it
    assert partial_path(out).exists() and not out.exists()
    with pytest.raises(FeatxError, match="incomplete|does not exist"):
        open_features(out)
    again = extract(ImageFolderSource(image_folder), tiny_backbone, out=out, batch_size=4, progress=False,
                    reuse="none")
    assert again.resumed and 0 < again.n_new < again.n_items
    a, b = _all(whole.path), _all(out)
    assert a.keys() == b.keys()
    for split in a:
        assert a[split][2] == b[split][2], "same ids in the same order, no duplicate or missing row"
        np.testing.assert_array_equal(a[split][1], b[split][1])
        np.testing.assert_allclose(a[split][0], b[split][0], rtol=1e-5, atol=1e-6)


def test_cache_is_reused_only_when_key_matches(image_folder, tiny_backbone, tmp_path):
    first = extract(ImageFolderSource(image_folder), tiny_backbone, cache_dir=tmp_path, progress=False)
    assert not first.reused and first.path.parent == tmp_path / "shapes"
    assert first.path.name.startswith(f"{TINY}-{first.cache_key}")
    again = extract(ImageFolderSource(image_folder), tiny_backbone, cache_dir=tmp_path, progress=False)
    assert again.reused and again.path == first.path and again.n_new == 0

    other_seed = extract(ImageFolderSource(image_folder, seed=1), tiny_backbone, cache_dir=tmp_path, progress=False)
    assert not other_seed.reused and other_seed.cache_key != first.cache_key

    # An image that changes between two runs changes the key.
    img = image_folder / "circle" / "circle_001.jpg"
    draw("square", np.random.default_rng(5), size=40).save(img)
    changed = extract(ImageFolderSource(image_folder), tiny_backbone, cache_dir=tmp_path, progress=False)
    assert changed.cache_key not in (first.cache_key, other_seed.cache_key)


def test_out_file_of_another_key_is_not_overwritten(image_folder, tiny_backbone, tmp_path):
    out = tmp_path / "x.h5"
    extract(ImageFolderSource(image_folder), tiny_backbone, out=out, progress=False)
    before = out.read_bytes()
    with pytest.raises(FeatxError, match="holds another cache"):
        extract(ImageFolderSource(image_folder, seed=3), tiny_backbone, out=out, progress=False)
    assert out.read_bytes() == before


def test_unreadable_image_is_skipped_and_recorded_never_a_zero_row(image_folder, tiny_backbone, tmp_path):
    (image_folder / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    src = ImageFolderSource(image_folder, val_fraction=0, test_fraction=0)
    result = extract(src, tiny_backbone, out=tmp_path / "c.h5", progress=False)
    assert result.n_skipped == 1
    train = open_features(result.path)["train"]
    assert len(train) == result.n_items - 1
    assert [s["id"] for s in train.skipped] == ["square/broken.jpg"]
    assert "square/broken.jpg" not in list(train.ids)
    assert np.all(np.abs(train.X).sum(axis=1) > 0)


def test_bad_options_are_refused_before_work(image_folder, tiny_backbone, tmp_path):
    with pytest.raises(FeatxError, match="unknown precision"):
        extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "a.h5", precision="fp8")
    with pytest.raises(FeatxError, match="batch size"):
        extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "a.h5", batch_size=0)
    assert not partial_path(tmp_path / "a.h5").exists()


@needs_fashion
def test_features_equal_a_plain_torchvision_forward(fashion_cache):
    """The default extraction (fp32) is what a user gets from torchvision by hand."""
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    model = torchvision.models.mobilenet_v2(weights=weights).eval()
    model.classifier = torch.nn.Identity()
    preprocess = weights.transforms()
    data = torchvision.datasets.FashionMNIST("cache/datasets", train=True)
    train = open_features(fashion_cache)["train"]
    ids, X = list(train.ids)[:8], train.X[:8]
    batch = torch.stack([preprocess(data[int(i.split("/")[1])][0].convert("RGB")) for i in ids])
    with torch.no_grad():
        plain = model(batch).numpy()
    assert X.shape == (8, 1280)
    np.testing.assert_allclose(X, plain, rtol=1e-4, atol=1e-5)


@needs_fashion
def test_bf16_is_opt_in_recorded_and_close(tmp_path):
    from featx.backbones import load_backbone
    from featx.data.layout import make_source

    source = make_source("torchvision:FashionMNIST", root="cache/datasets", limit=8)
    bb = load_backbone("mobilenet_v2", "IMAGENET1K_V1")
    fp32 = extract(source, bb, cache_dir=tmp_path, progress=False)
    bf16 = extract(source, bb, cache_dir=tmp_path, precision="bf16", progress=False)
    assert fp32.cache_key != bf16.cache_key
    assert open_features(bf16.path).meta["precision"] == "bf16"
    a, b = open_features(fp32.path)["test"].X, open_features(bf16.path)["test"].X
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98


def test_torchvision_decoder_is_opt_in_recorded_and_close(image_folder, tiny_backbone, tmp_path):
    """--decoder torchvision: a different cache key, recorded, features close to PIL's (not equal)."""
    from featx.extract import cache_key

    source = ImageFolderSource(image_folder)
    pil = extract(source, tiny_backbone, out=tmp_path / "pil.h5", progress=False)
    tv = extract(source, tiny_backbone, out=tmp_path / "tv.h5", progress=False, decoder="torchvision")
    assert pil.cache_key == cache_key(source, tiny_backbone, "fp32") != tv.cache_key
    a, b = open_features(pil.path), open_features(tv.path)
    assert a.meta["decoder"] == "pil" and b.meta["decoder"] == "torchvision"
    for split in a.splits:
        np.testing.assert_array_equal(a[split].ids, b[split].ids)
        Xa, Xb = a[split].X, b[split].X
        cos = (Xa * Xb).sum(1) / np.linalg.norm(Xa, axis=1) / np.linalg.norm(Xb, axis=1)
        assert cos.min() > 0.99
    with pytest.raises(FeatxError, match="unknown decoder"):
        extract(source, tiny_backbone, out=tmp_path / "x.h5", progress=False, decoder="opencv")


@pytest.mark.skipif(not (__import__("shutil").which("cc") or __import__("shutil").which("gcc")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compile_is_opt_in_recorded_and_gives_the_same_features(image_folder, tiny_backbone, tmp_path):
    """--compile: same key and features (within fp32 rounding) as eager; short last batches are padded,
    so the compiled model sees one shape."""
    source = ImageFolderSource(image_folder)  # 28 / 4 / 4 items: batches of 8 leave short ones
    eager = extract(source, tiny_backbone, out=tmp_path / "eager.h5", batch_size=8, progress=False)
    compiled = extract(source, tiny_backbone, out=tmp_path / "compiled.h5", batch_size=8, progress=False,
                       compile=True)
    assert compiled.cache_key == eager.cache_key
    a, b = open_features(eager.path), open_features(compiled.path)
    assert not a.meta["compiled"] and b.meta["compiled"]
    for split in a.splits:
        np.testing.assert_array_equal(a[split].ids, b[split].ids)
        np.testing.assert_allclose(b[split].X, a[split].X, rtol=1e-4, atol=1e-6 * np.abs(a[split].X).max())


def test_every_stage_in_one_pass_is_recorded_and_serves_fit_and_predict(image_folder, tiny_backbone, tmp_path):
    """--layers stages: the pooled end of every stage, concatenated in one forward pass; the last part is the
    penultimate embedding itself; the parts are recorded, the key differs, and a head on them predicts new images."""
    import json

    from click.testing import CliRunner

    from conftest import TINY
    from featx.cli import main

    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a])  # noqa: E731
    plain = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "plain.h5", progress=False)
    result = run("extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--layers", "stages",
                 "--out", tmp_path / "stages.h5", "--no-progress")
    assert result.exit_code == 0, result.output
    fs, ref = open_features(tmp_path / "stages.h5"), open_features(plain.path)
    parts = fs.meta["layer_parts"]
    assert [name for name, _ in parts][-1] == "penultimate" and len(parts) > 3
    assert fs.feature_dim == sum(w for _, w in parts) and fs.cache_key != ref.cache_key
    np.testing.assert_allclose(fs["train"].X[:, -parts[-1][1]:], ref["train"].X, rtol=1e-4, atol=1e-5)
    first, width = parts[0]  # the first part is that module's output, pooled: checked against a hook of our own
    import torch

    from featx.backbones import load_backbone

    bb = load_backbone(TINY, "none")
    seen = {}
    dict(bb.model.named_modules())[first].register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    from featx.data.decoding import open_image

    img = bb.transform(open_image(ImageFolderSource(image_folder).splits()["train"].keys[0])).unsqueeze(0)
    with torch.inference_mode():
        bb.model(img)
    np.testing.assert_allclose(fs["train"].X[0, :width], seen["x"].mean(dim=(2, 3))[0].numpy(), rtol=1e-4, atol=1e-5)
    assert run("fit", tmp_path / "stages.h5", "--head", "logreg", "--no-baselines", "--no-tune",
               "--out", tmp_path / "h.skops").exit_code == 0
    pred = run("predict", "--head-file", tmp_path / "h.skops", image_folder / "circle", "--out", tmp_path / "p.json")
    assert pred.exit_code == 0, pred.output
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 12
    # a head of two chosen layers keeps its own columns: it takes the whole vector, predicts, exports linearly
    two = f"{parts[1][0]},{parts[-1][0]}"
    chosen = run("fit", tmp_path / "stages.h5", "--head", "logreg", "--no-baselines", "--layers", two,
                 "--out", tmp_path / "two.skops")
    assert chosen.exit_code == 0, chosen.output
    assert f"layers: {parts[1][0]}, penultimate ({parts[1][1] + parts[-1][1]} of the cache's columns)" in chosen.stdout
    assert f" x {parts[1][1] + parts[-1][1]} (" in chosen.stdout  # the fit line counts the columns it used
    from featx.heads.export import linear_weights
    from featx.heads.persist import load_head

    head, _ = load_head(tmp_path / "two.skops")
    W, b = linear_weights(head)
    X = fs["test"].X
    np.testing.assert_allclose(X @ W.T + b, head.decision_function(X), rtol=1e-3, atol=1e-3)
    assert not W[:, :parts[0][1]].any(), "an unchosen layer (the first) has no weight"
    assert run("predict", "--head-file", tmp_path / "two.skops", image_folder / "circle").exit_code == 0
    searched = run("grid", tmp_path / "stages.h5", "--heads", "logreg", "--grid", "C=0.1", "--no-baselines",
                   "--jobs", "1", "--layers", "search", "--out", tmp_path / "g")
    assert searched.exit_code == 0, searched.output
    lay = json.loads((tmp_path / "g" / "results.json").read_text())["layers"]
    assert lay["chosen"] and set(lay["chosen"]) <= {n for n, _ in parts} and lay["trace"][-1]["layers"] == lay["chosen"]
    assert [t["score"] for t in lay["trace"]] == sorted(t["score"] for t in lay["trace"]), "each step raised val"
    assert "Which layers?" in (tmp_path / "g" / "report.md").read_text()
    against = lay["against_all"]  # a handful of val rows: the selected layers cannot be told from every layer
    assert against["verdict"] == "can't tell" and abs(against["gain"]) <= against["se"]
    wrong = run("fit", tmp_path / "stages.h5", "--head", "logreg", "--layers", "nope", "--out", tmp_path / "x.skops")
    assert wrong.exit_code == 2 and "'nope' is not a layer of this cache" in wrong.stderr
    named = run("extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--layers",
                f"{first},nonexistent", "--out", tmp_path / "n.h5", "--no-progress")
    assert named.exit_code == 2 and "layer 'nonexistent' is not a module of this model" in named.stderr


def test_augmented_views_are_seeded_extracted_apart_and_train_the_head(image_folder, tmp_path):
    """--views 2: two caches of augmented train images beside the main one, the same on a second run (seeded),
    different from the centre view and from each other; fit trains on them and records it; --no-views does not."""
    import json

    from click.testing import CliRunner

    from conftest import TINY
    from featx.cli import main
    from featx.data.views import AugmentedViews, view_path

    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a])  # noqa: E731
    cache = tmp_path / "c.h5"
    result = run("extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", "--views", "2",
                 "--out", cache, "--no-progress")
    assert result.exit_code == 0, result.output
    main_fs, v1, v2 = open_features(cache), open_features(view_path(cache, 1)), open_features(view_path(cache, 2))
    n = len(main_fs["train"])
    assert list(v1.splits) == ["train"] and len(v1["train"]) == n and v1.meta["source"]["views"]["of"] == main_fs.cache_key
    assert list(v1["train"].ids) == [f"{i}#view1" for i in main_fs["train"].ids]
    apart = lambda a, b: np.abs(a - b).max() > 1e-3 * np.abs(b).max()  # noqa: E731 (random-init: tiny values)
    assert apart(v1["train"].X, main_fs["train"].X) and apart(v1["train"].X, v2["train"].X)
    source = ImageFolderSource(image_folder)
    key = source.splits()["train"].keys[0]
    a, b = AugmentedViews(source, 1, of="k").open(key), AugmentedViews(source, 1, of="k").open(key)
    assert np.array_equal(np.asarray(a), np.asarray(b)), "a view is a seeded draw: the same image every time"
    fitted = run("fit", cache, "--head", "logreg", "--no-baselines", "--no-tune", "--out", tmp_path / "h.skops")
    assert fitted.exit_code == 0, fitted.output
    card = json.loads((tmp_path / "h.json").read_text())
    assert card["n_train"] == 3 * n and len(card["views"]) == 2
    plain = run("fit", cache, "--head", "logreg", "--no-baselines", "--no-tune", "--no-views",
                "--out", tmp_path / "p.skops")
    assert plain.exit_code == 0 and json.loads((tmp_path / "p.json").read_text())["n_train"] == n


def test_the_same_settings_written_as_int_or_float_give_one_key(image_folder, tiny_backbone):
    """val/test fractions 0 and 0.0 are one setting (the API took an int, the command line a float: two keys)."""
    from featx.extract import cache_key

    keys = {cache_key(ImageFolderSource(image_folder, val_fraction=v, test_fraction=t), tiny_backbone)
            for v, t in ((0, 0), (0.0, 0.0))}
    assert len(keys) == 1


def test_decoding_processes_give_the_exact_batches_in_order(image_folder, tiny_backbone):
    """Worker processes (chosen when the host only decodes) hand over the same inputs as decoding in the consumer,
    in item order, joined from chunks small enough that every process works (36 items, 2 processes: chunks of 2
    joined into batches of 16)."""
    from featx.data.balance import choose
    from featx.extract.batches import Items, collate, process_batches

    source = ImageFolderSource(image_folder, val_fraction=0, test_fraction=0)
    ds = Items(source, source.splits()["train"], 0, tiny_backbone.transform)
    batches = list(process_batches(ds, 16, 2, torch.device("cpu"), channels_last=True))
    assert [len(idx) for _, idx, _ in batches] == [16, 16, 4]
    assert [j for _, idx, _ in batches for j in idx] == list(range(36))
    x = torch.cat([xs for xs, _, _ in batches])
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, collate([ds[i] for i in range(36)])[0], rtol=0, atol=0)
    # when: the host only decodes (an accelerator, or a forward under a quarter of the decoding) over enough items
    assert choose(3.0, 0.1, 16, n_items=1000).decode_processes == 16
    assert choose(3.0, 0.1, 16, accelerator=True, n_items=200).decode_processes == 0  # too few: threads
    assert choose(50.0, 33.0, 2, n_items=1000).decode_processes == 0  # 12 MP photos, MobileNetV2 on a CPU: threads
    assert choose(33.0, 8.0, 2, n_items=1000).decode_processes == 0  # 12 MP photos decode without the GIL: threads
    assert choose(33.0, 0.5, 16, accelerator=True, n_items=1000).decode_threads == 16  # idem on a GPU host
