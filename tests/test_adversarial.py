"""Adversarial inputs and outputs: each test is something a user (or an attacker) did that used to destroy an
input, run code or give a silently wrong result; each now gets one clear line (exit 2 before any work, or 1) or a
correct result. Add a case here for every new way found.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import TINY
from featx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result, status: int) -> str:
    assert result.exit_code == status, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("featx: error: "), result.stderr
    return lines[0]


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A folder of real pictures, its cache and a fitted logreg head with its card (made once for the module)."""
    from conftest import make_folder

    root = tmp_path_factory.mktemp("adv")
    data = make_folder(root / "shapes")
    cache = root / "c.h5"
    assert run("-q", "extract", "--data", data, "--backbone", TINY, "--weights", "none", "--out", cache,
               "--no-progress").exit_code == 0
    head = root / "lr.skops"
    assert run("-q", "fit", cache, "--head", "logreg", "--no-baselines", "--out", head).exit_code == 0
    return root, data, cache, head


# -- outputs never destroy inputs --------------------------------------------------------------------------------

def test_fit_never_writes_over_its_cache(fitted):
    root, _, cache, _ = fitted
    before = digest(cache)
    msg = one_line(run("fit", cache, "--head", "logreg", "--no-baselines", "-o", cache), 2)
    assert f"{cache} is the cache {cache}: writing there would destroy it" in msg and msg.startswith("featx: error: --out")
    # nor over the cache's stored baseline features
    assert "its baseline features" in one_line(run("fit", cache, "--head", "logreg", "--no-baselines", "-o",
                                                   root / "c.baselines.npz"), 2)
    assert digest(cache) == before


def test_audit_manifest_never_replaces_the_cache_or_an_image(fitted):
    root, data, cache, _ = fitted
    image = next(data.rglob("*.png"))
    before = {p: digest(p) for p in (cache, image)}
    assert "is the cache" in one_line(run("audit", cache, "-o", root / "a", "--write-manifest", cache), 2)
    msg = one_line(run("audit", cache, "-o", root / "a", "--write-manifest", image, "--no-pixels"), 2)
    assert "exists and is an image" in msg
    assert {p: digest(p) for p in before} == before
    assert not (root / "a").exists(), "refused before any work: no report written"


def test_predict_and_export_model_never_replace_the_head_or_its_card(fitted):
    root, data, _, head = fitted
    card = head.with_suffix(".json")
    before = {p: digest(p) for p in (head, card)}
    image = next(data.rglob("*.png"))
    assert "(its card)" in one_line(run("predict", "-F", head, image, "-o", card), 2)
    assert f"{head} is the head {head}" in one_line(run("export-model", "-F", head, "-o", head), 2)
    assert {p: digest(p) for p in before} == before


def test_extract_out_never_replaces_another_kind_of_file(fitted, tmp_path):
    _, data, _, _ = fitted
    copy = shutil.copytree(data, tmp_path / "shapes")
    image = next(copy.rglob("*.jpg"))
    before = digest(image)
    msg = one_line(run("extract", "--data", copy, "--backbone", TINY, "--weights", "none", "--out", image), 2)
    assert "exists and is an image" in msg and digest(image) == before


def test_a_report_folder_replaces_only_earlier_reports(fitted, tmp_path):
    _, _, cache, _ = fitted
    out = tmp_path / "r"
    out.mkdir()
    precious = shutil.copy(cache, out / "report.md")  # a cache that happens to have a report's name
    for args in (["grid", cache, "--heads", "logreg"], ["audit", cache, "--no-pixels"]):
        msg = one_line(run(*args, "--out", out), 2)
        assert f"{out / 'report.md'} exists and is an HDF5 file" in msg and "force" not in msg
    assert digest(precious) == digest(cache)
    precious.unlink()
    assert run("-q", "audit", cache, "--no-pixels", "--out", out).exit_code == 0
    assert run("-q", "audit", cache, "--no-pixels", "--out", out).exit_code == 0, "an earlier report is replaced"


def test_export_replaces_its_own_output_and_nothing_else(fitted):
    root, _, cache, _ = fitted
    out = root / "x.npz"
    assert run("export", cache, "-o", out).exit_code == 0
    again = run("export", cache, "-o", out)  # used to fail: "Directory ... is a file"
    assert again.exit_code == 0, again.output
    notes = root / "notes.txt"
    notes.write_text("mine\n")
    assert "exists and is a text file" in one_line(run("export", cache, "-o", notes), 2)
    assert notes.read_text() == "mine\n"
    assert run("export", cache, "-o", notes, "--force").exit_code == 0, "--force: the user asked for it"
    assert open(notes, "rb").read(4) == b"PK\x03\x04", "the export replaced the text file"


# -- saved heads are checked before anything is inflated ----------------------------------------------------------

def _bomb(head, target, megabytes: int):
    """``head``'s skops archive plus one entry of ``megabytes`` MB of zeros (deflated to a few hundred KB), with a
    card whose sha256 matches: what an attacker would ship."""
    import zipfile

    with zipfile.ZipFile(head) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with dst.open("bomb.npy", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(megabytes):
                f.write(block)
    card = json.loads(head.with_suffix(".json").read_text())
    card["head_sha256"] = digest(target)
    target.with_suffix(".json").write_text(json.dumps(card))
    return target


def test_a_decompression_bomb_is_refused_before_it_inflates(fitted, tmp_path):
    import time

    from featx import FeatxError, load_head

    _, data, _, head = fitted
    bomb = _bomb(head, tmp_path / "bomb.skops", 300)
    assert bomb.stat().st_size < 2 << 20
    t0 = time.perf_counter()
    with pytest.raises(FeatxError, match="decompression bomb"):
        load_head(bomb)
    assert time.perf_counter() - t0 < 1.0
    msg = one_line(run("predict", "-F", bomb, next(data.rglob("*.png"))), 1)
    assert "inflates" in msg and "not loaded" in msg
    est, card = load_head(head)  # the real head still loads
    assert card["head"] == "logreg" and hasattr(est, "predict")


# -- caches are validated when opened ------------------------------------------------------------------------------

def _tampered(cache, tmp_path, change):
    import h5py

    out = tmp_path / "t.h5"
    shutil.copy(cache, out)
    with h5py.File(out, "r+") as f:
        change(f)
    return out


@pytest.mark.parametrize("change, words", [
    (lambda f: f["train"].attrs.__setitem__("n_committed", 10**12), "committed rows but arrays"),
    (lambda f: f["train"]["labels"].resize((5,)), "committed rows but arrays"),
    (lambda f: f["train"]["labels"].__setitem__(0, 99), "labels outside -1..2"),
    (lambda f: f.attrs.__delitem__("feature_dim"), "'feature_dim' is missing"),
    (lambda f: f.attrs.__setitem__("cache_key", 7), "'cache_key' is not str"),
], ids=["huge-count", "short-labels", "label-99", "no-dim", "key-type"])
def test_a_tampered_cache_is_one_line_in_every_command(fitted, tmp_path, change, words):
    _, _, cache, _ = fitted
    bad = _tampered(cache, tmp_path, change)
    for args in (["info", bad], ["fit", bad, "--head", "knn", "--no-baselines", "-o", tmp_path / "h.skops"],
                 ["export", bad, "-o", tmp_path / "x.npz"], ["audit", bad, "-o", tmp_path / "a", "--no-pixels"],
                 ["adapt", bad, bad, "-o", tmp_path / "ad"]):
        msg = one_line(run(*args), 1)
        assert "damaged or not a featx cache" in msg and words in msg, (args[0], msg)
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "h.skops").exists()


def test_a_sparse_feature_dataset_is_refused_without_reading_it(tmp_path):
    import time

    import h5py
    import numpy as np

    from featx import FeatxError, open_features
    from featx.cache.writer import FeatureWriter

    path = tmp_path / "s.h5"
    with FeatureWriter(path, attrs={"cache_key": "k", "backbone": "b"}, classes=["a", "b"],
                       split_sizes={"train": 2}, feature_dim=4) as w:
        w.append("train", np.ones((2, 4), np.float32), np.array([0, 1]), ["x", "y"])
        w.finalize()
    with h5py.File(path, "r+") as f:  # claim 10^8 rows that were never written
        for name in ("features", "labels", "ids", "fingerprints"):
            f["train"][name].resize((10**8, *f["train"][name].shape[1:]))
        f["train"].attrs["n_committed"] = 10**8
    t0 = time.perf_counter()
    with pytest.raises(FeatxError, match="bytes were ever written"):
        open_features(path)
    assert time.perf_counter() - t0 < 5


def test_a_nan_row_is_reported_not_dropped(fitted, tmp_path, monkeypatch):
    import numpy as np

    _, data, cache, _ = fitted
    bad = _tampered(cache, tmp_path, lambda f: f["train"]["features"].__setitem__(0, np.full(
        f["train"]["features"].shape[1], np.nan, np.float32)))
    msg = one_line(run("neighbors", bad, next(data.rglob("*.png"))), 1)
    assert "1 row(s) of train have NaN or infinite features" in msg


def test_a_fifo_is_not_opened(tmp_path):
    import os

    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    assert "is not a regular file" in one_line(run("info", fifo), 2)


# -- what featx prints cannot drive the terminal; nothing readable is a failure --------------------------------------

def test_control_characters_in_names_are_escaped(tmp_path):
    from conftest import make_folder

    data = make_folder(tmp_path / "d", per_class=6)
    evil = "evil\x1b]0;pwned\x07"
    (data / "circle").rename(data / evil)
    cache = tmp_path / "c.h5"
    result = run("extract", "--data", data, "--backbone", TINY, "--weights", "none", "--out", cache)
    assert result.exit_code == 0, result.output
    info = run("info", cache)
    assert info.exit_code == 0 and "\x1b" not in info.output + info.stderr and "\x07" not in info.output
    assert "evil\\x1b]0;pwned\\x07" in info.output
    neighbors = run("neighbors", cache, next((data / evil).glob("*.png")))
    assert neighbors.exit_code == 0 and "\x1b" not in neighbors.output + neighbors.stderr


def test_all_images_unreadable_is_a_failure_that_writes_nothing(fitted, tmp_path):
    _, _, cache, head = fitted
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "p.json"
    msg = one_line(run("predict", "-F", head, broken, "-o", out), 1)
    assert "none of the 1 image(s) could be read" in msg and not out.exists()
    assert "none of the 1 image(s) could be read" in one_line(run("neighbors", cache, broken), 1)


# -- usage errors come before any work -------------------------------------------------------------------------------

def test_usage_errors_before_any_work(fitted, tmp_path):
    _, data, cache, _ = fitted
    msg = one_line(run("rank", "--data", data, "--backbones", f"{TINY}:none,resnet5", "--cache-dir", tmp_path / "c",
                       "--out", tmp_path / "r", "--no-progress"), 2)
    assert "unknown backbone 'resnet5'" in msg
    assert not (tmp_path / "c").exists(), "no candidate was extracted before the refusal"
    assert "0 runs nothing" in one_line(run("grid", cache, "--jobs", "0", "--out", tmp_path / "g"), 2)
    assert not (tmp_path / "g").exists()
    assert "worker processes up to" in one_line(run("extract", "--data", data, "--workers", "10000",
                                                    "--out", tmp_path / "x.h5"), 2)


@pytest.mark.parametrize("args, words", [
    (["--backbone", "resnet5"], "unknown backbone 'resnet5'; did you mean resnet50"),
    (["--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V3"], "has no weights 'IMAGENET1K_V3'"),
    (["--backbone", "mobilenet_v2:V9"], "has no weights 'V9'"),
])
def test_a_misspelt_backbone_is_refused_before_torch_loads(args, words):
    """In a fresh interpreter: the refusal comes from featx's table of names, with torch never imported."""
    import subprocess
    import sys

    code = ("import sys\nfrom featx.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, "extract", *args], capture_output=True, text=True, timeout=60)
    assert words in done.stderr, done.stderr
    assert done.stdout.split() == ["exit", "2", "False"]


# -- a head and its card are one checked unit --------------------------------------------------------------------

def _edit_inside(head, target, change, *, drop_card=False):
    """A copy of ``head`` whose card inside was changed (or removed, as in a head of an earlier featx)."""
    import zipfile

    from featx.heads.persist import CARD_ENTRY

    with zipfile.ZipFile(head) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    card = json.loads(entries.pop(CARD_ENTRY))
    change(card)
    if not drop_card:
        entries[CARD_ENTRY] = json.dumps(card).encode()
    with zipfile.ZipFile(target, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    card["head_sha256"] = digest(target)
    target.with_suffix(".json").write_text(json.dumps(card))
    return target


def test_a_head_without_a_card_is_a_usage_error_before_any_model_loads(fitted, tmp_path):
    import subprocess
    import sys

    _, data, _, head = fitted
    bare = _edit_inside(head, tmp_path / "bare.skops", lambda card: None, drop_card=True)
    bare.with_suffix(".json").unlink()  # no card inside, none beside: nothing says which features it needs
    image = next(data.rglob("*.png"))
    code = ("import sys\nfrom featx.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules)")
    for args in (["predict", "-F", bare, image], ["export-model", "-F", bare, "-o", tmp_path / "m.onnx"]):
        done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                              timeout=60)
        assert f"{bare} has no card (none inside it, no bare.json beside it)" in done.stderr, done.stderr
        assert done.stdout.split() == ["exit", "2", "False"]


def test_edits_to_the_card_beside_a_head_change_no_prediction(fitted, tmp_path):
    _, data, _, head = fitted
    image = next(data.rglob("*.png"))
    copy = shutil.copy(head, tmp_path / "h.skops")
    card = json.loads(head.with_suffix(".json").read_text())
    before = run("predict", "-F", copy, image)
    card["classes"] = list(reversed(card["classes"]))  # a reordered class list would swap every label
    card["calibration"] = {"temperature": -1.0}  # ... and a negative temperature invert every probability
    (tmp_path / "h.json").write_text(json.dumps(card))
    after = run("predict", "-F", copy, image)
    assert after.exit_code == 0 and after.stdout == before.stdout
    assert "differs from the card inside h.skops in classes, calibration" in after.stderr


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(calibration={"temperature": -1.0}), "temperature -1.0 is not a positive number"),
    (lambda c: c.update(classes=["only"]), "trained on class 2 but its card names 1 classes"),
    (lambda c: c.update(embedding="mobilenet_v2"), "embedding record is not a mapping"),
], ids=["negative-temperature", "too-few-classes", "embedding-type"])
def test_a_head_whose_own_card_is_wrong_is_refused(fitted, tmp_path, change, words):
    _, data, _, head = fitted
    bad = _edit_inside(head, tmp_path / "bad.skops", change)
    assert words in one_line(run("predict", "-F", bad, next(data.rglob("*.png"))), 1)


def test_an_interrupted_save_leaves_a_usable_head(fitted, tmp_path):
    """kill -9 between the head's rename and its card's: a new head beside the old card still predicts with its own
    card (used to: 'does not match its card ... changed after featx fit', blaming the user)."""
    _, data, cache, head = fitted
    target = tmp_path / "h.skops"
    assert run("-q", "fit", cache, "--head", "logreg", "--no-baselines", "-P", "C=0.001", "-o", target).exit_code == 0
    old_card = (tmp_path / "h.json").read_text()
    assert run("-q", "fit", cache, "--head", "logreg", "--no-baselines", "-P", "C=10", "-o", target).exit_code == 0
    (tmp_path / "h.json").write_text(old_card)  # the card of the earlier fit beside the new head
    result = run("predict", "-F", target, next(data.rglob("*.png")), "-o", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    from featx import load_head

    _, card = load_head(target)
    assert card["params"]["C"] == 10 and card["head_sha256"] == digest(target)


def test_an_old_card_without_its_embedding_never_runs_on_other_features(fitted, tmp_path):
    from conftest import make_folder

    root, data, cache, head = fitted
    moved = shutil.copy(cache, tmp_path / "c.h5")
    old = _edit_inside(head, tmp_path / "old.skops",
                       lambda c: (c.pop("embedding"), c.update(cache=str(moved))), drop_card=True)
    assert run("predict", "-F", old, next(data.rglob("*.png"))).exit_code == 0, "its cache still says"
    other = make_folder(tmp_path / "other", per_class=5, seed=3)
    (tmp_path / "c.h5").unlink()
    assert run("-q", "extract", "--data", other, "--backbone", TINY, "--weights", "none", "--out", moved,
               "--no-progress").exit_code == 0  # another cache under the same name
    assert "now holds other features" in one_line(run("predict", "-F", old, next(data.rglob("*.png"))), 1)


# -- inputs are never counted twice ---------------------------------------------------------------------------------

def test_a_symlink_to_a_parent_folder_counts_nothing_twice(tmp_path, caplog):
    from conftest import make_folder
    from featx.data.files import ImageFolderSource

    data = make_folder(tmp_path / "d", per_class=6)
    plain = ImageFolderSource(data)
    counts = {s: len(i) for s, i in plain.splits().items()}
    (data / "square" / "loop").symlink_to("..")  # square/loop/circle/... is every circle again
    looped = ImageFolderSource(data)
    with caplog.at_level("INFO", logger="featx"):
        splits = looped.splits()
    assert {s: len(i) for s, i in splits.items()} == counts
    keys = [k for i in splits.values() for k in i.keys]
    assert not any("/loop/" in k for k in keys) and len(set(keys)) == len(keys)
    assert "reached again through symbolic links were counted once" in caplog.text


def test_a_manifest_lists_each_file_once(tmp_path):
    from conftest import make_folder
    from featx import FeatxError
    from featx.data.files import ManifestSource

    data = make_folder(tmp_path / "d", per_class=6)
    files = sorted(p.relative_to(tmp_path) for p in data.rglob("*.png"))
    rows = ["path,label,split"] + [f"{p},{p.parent.name},train" for p in files]
    twice = tmp_path / "twice.csv"  # the first file again, spelled another way, in test
    twice.write_text("\n".join(rows + [f"{files[0].parent}/../{files[0].parent.name}/{files[0].name},"
                                       f"{files[0].parent.name},test"]) + "\n")
    splits = ManifestSource(twice).splits()
    keys = [k for i in splits.values() for k in i.keys]
    assert len(keys) == len(set(keys)) == len(files) and not len(splits.get("test", []))
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text("\n".join(rows + [f"{files[0]},other,train"]) + "\n")
    with pytest.raises(FeatxError, match="with another label"):
        ManifestSource(relabelled).splits()


def test_the_clean_manifest_lists_only_what_was_audited(fitted, tmp_path):
    import csv

    from conftest import draw

    import numpy as np

    _, data, _, _ = fitted
    copy = shutil.copytree(data, tmp_path / "shapes")
    cache = tmp_path / "c.h5"
    assert run("-q", "extract", "--data", copy, "--backbone", TINY, "--weights", "none", "--out", cache,
               "--no-progress").exit_code == 0
    draw("circle", np.random.default_rng(9)).save(copy / "circle" / "late.png")  # added after the extraction
    manifest = copy / "clean.csv"
    result = run("audit", cache, "-o", tmp_path / "a", "--no-pixels", "--write-manifest", manifest)
    assert result.exit_code == 0, result.output
    assert "newer than the cache and were not audited" in result.stderr
    paths = [r["path"] for r in csv.DictReader(open(manifest, encoding="utf-8"))]
    assert paths and not any(p.endswith("late.png") for p in paths)


def test_row_reuse_says_why_it_reused_nothing(tmp_path):
    import os

    from conftest import make_folder

    data = make_folder(tmp_path / "d", per_class=4)
    first = run("-q", "extract", "--data", data, "--backbone", TINY, "--weights", "none", "--cache-dir", tmp_path / "c",
                "--no-progress")
    assert first.exit_code == 0
    copied = shutil.copytree(data, tmp_path / "copy")  # what cp -r does: the same files, new modification times
    for p in copied.rglob("*.*"):
        os.utime(p, (1_000_000_000, 1_000_000_000))
    donor = next((tmp_path / "c").rglob("*.h5"))
    again = run("extract", "--data", copied, "--backbone", TINY, "--weights", "none", "--reuse", donor,
                "--out", tmp_path / "x.h5", "--no-progress")
    assert again.exit_code == 0, again.output
    assert "reused no row of" in again.stderr and "another file size or modification time" in again.stderr


def test_row_reuse_matches_a_copied_folder_by_content_a_manifest_by_file_and_a_cache_beside_out(tmp_path):
    """Three ways the same images came back and were embedded again: a copied folder (new modification times), a
    manifest written outside the folder (ids gain a prefix), and an explicit --out beside a complete cache."""
    import os

    import numpy as np

    from conftest import make_folder
    from featx import open_features

    data = make_folder(tmp_path / "d", per_class=4)
    common = ("--backbone", TINY, "--weights", "none", "--no-progress")
    assert run("-q", "extract", "--data", data, "--cache-dir", tmp_path / "c", *common).exit_code == 0
    donor = next((tmp_path / "c").rglob("*.h5"))
    fs = open_features(donor)
    rows, n = fs["train"], sum(len(fs[s].ids) for s in fs.splits)
    copied = shutil.copytree(data, tmp_path / "copy")
    for p in copied.rglob("*.*"):
        os.utime(p, (1_000_000_000, 1_000_000_000))
    again = run("extract", "--data", copied, "--reuse", donor, "--fingerprint", "content", "--out", tmp_path / "x.h5",
                *common)
    assert again.exit_code == 0, again.output
    assert f"reused {n} rows from {donor}, embedded 0 new" in again.stdout
    np.testing.assert_array_equal(open_features(tmp_path / "x.h5")["train"].X, rows.X)
    changed = sorted(copied.rglob("*.png"))[0]  # the bytes of one copy change: that image alone is embedded
    changed.write_bytes(changed.read_bytes() + b"\0")
    edited = run("extract", "--data", copied, "--reuse", donor, "--fingerprint", "content", "--out",
                 tmp_path / "y.h5", *common)
    assert f"reused {n - 1} rows from {donor}, embedded 1 new" in edited.stdout, edited.output

    manifest = tmp_path / "m.csv"  # beside the folder: its paths read d/circle/..., the cache's ids circle/...
    ids = [i for s in fs.splits for i in fs[s].ids]
    manifest.write_text("path,label\n" + "".join(f"d/{i},{i.split('/')[0]}\n" for i in ids))
    listed = run("extract", "--data", manifest, "--cache-dir", tmp_path / "c", "--val-fraction", "0",
                 "--test-fraction", "0", *common)
    assert listed.exit_code == 0, listed.output
    assert f"reused {n} rows from {donor}, embedded 0 new" in listed.stdout

    beside = run("extract", "--data", data, "--cache-dir", tmp_path / "c", "--out", donor.parent / "mine.h5", *common)
    assert beside.exit_code == 0, beside.output
    assert "embedded 0 new" in beside.stdout and "reused" in beside.stdout


def test_a_clean_manifest_is_written_only_where_extract_can_read_it(fitted, tmp_path):
    _, data, cache, _ = fitted
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    msg = one_line(run("audit", cache, "-o", tmp_path / "a", "--no-pixels", "--write-manifest", elsewhere / "m.csv"), 2)
    assert "would list images outside its folder" in msg and f"e.g. {data / 'm.csv'}" in msg
    assert not (tmp_path / "a").exists()


def test_a_fit_without_its_cache_writes_nothing(tmp_path):
    """`featx fit --pipeline P` when P's settings have no cache: said without loading the dataset (it used to unpack
    Debian's Fashion-MNIST, 53 MB, before saying so); with a cache, found without loading it either."""
    from conftest import FASHION

    if not FASHION.is_dir():
        pytest.skip("Fashion-MNIST not installed")
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    empty_root = tmp_path / "datasets"  # the pipeline's dataset folder: loading the dataset would unpack it there
    pipeline = tmp_path / "p.toml"
    text = open(os.path.join(repo, "pipelines", "default.toml")).read()
    pipeline.write_text(text.replace("[source]\n", f'[source]\nroot = "{empty_root}"\n', 1)
                        + f'\n[cache]\ndir = "{tmp_path / "cache"}"\n')
    made = run("-q", "extract", "--pipeline", pipeline, "--limit", "20", "--root", os.path.join(repo, "cache", "datasets"),
               "--no-progress")  # the cache, made from the dataset where it is unpacked already
    assert made.exit_code == 0, made.output
    msg = one_line(run("fit", "--pipeline", pipeline, "--limit", "30", "--head", "knn", "--no-baselines"), 2)
    assert "no cache for these settings yet" in msg and "--limit 20" in msg
    found = run("-q", "fit", "--pipeline", pipeline, "--limit", "20", "--head", "knn", "--no-baselines")
    assert found.exit_code == 0, found.output
    assert not empty_root.exists() and not (tmp_path / "cache" / "datasets").exists()
