"""Hardening: messy image folders, kills, Ctrl-C, concurrent runs, a full disk, damaged files, untrusted
heads and bad command lines. Nothing is lost, nothing is silent, nothing ends in a traceback."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY, draw, make_folder
from featx import FeatxError, open_features
from featx.cli import main
from featx.extract import cache_key, extract
from featx.heads.persist import load_head
from featx.util import file_sha256
from featx.pipeline import load_pipeline
from featx.data.files import ImageFolderSource, ManifestSource

NO_SPLIT = {"val_fraction": 0, "test_fraction": 0}


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments, status=1):
    """One ``featx: error:`` line and the exit status of the rule: 2 usage error, 1 failed run."""
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("featx: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def bomb_png(path: Path, side: int = 20000) -> None:
    """A PNG header claiming side x side pixels (400 Mpx) with no pixel data behind it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Every kind of file a real image folder holds: class `good` (readable in every format), class `bad`
    (nothing readable), and files that are not images at all."""
    rng = np.random.default_rng(0)
    root = tmp_path / "messy"
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    base = draw("circle", rng, size=40)
    base.save(good / "plain.jpg")
    base.convert("RGBA").save(good / "alpha.png")
    base.convert("P").save(good / "palette.png")
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(good / "sixteen_bit.png")
    base.convert("L").save(good / "gray.jpg")
    base.convert("CMYK").save(good / "cmyk.jpg")
    wide = draw("stripes", rng, size=40).resize((60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    wide.save(good / "exif_rotated.jpg", exif=exif)
    frames = [draw("square", rng, size=40) for _ in range(2)]
    frames[0].save(good / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(good / "animated.webp", save_all=True, append_images=frames[1:])
    base.save(good / "ünïcödé 😀.jpg")
    base.save(good / os.fsdecode(b"latin1-\xe9t\xe9.jpg"))  # not UTF-8
    shutil.copy(good / "plain.jpg", good / "duplicate.jpg")
    # not images, or not to be read
    (good / ".hidden.jpg").write_bytes(b"")
    (good / "._plain.jpg").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (good / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (good / "notes.txt").write_text("not an image")
    (good / "loop").symlink_to(good, target_is_directory=True)  # a symlink loop
    # class `bad`: nothing readable
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes((good / "plain.jpg").read_bytes()[:300])
    (bad / "text.jpg").write_text("this is not a JPEG")
    bomb_png(bad / "bomb.png")
    return root


READABLE = {"plain.jpg", "alpha.png", "palette.png", "sixteen_bit.png", "gray.jpg", "cmyk.jpg", "exif_rotated.jpg",
            "animated.gif", "animated.webp", "ünïcödé 😀.jpg", "latin1-\\xe9t\\xe9.jpg", "duplicate.jpg"}
UNREADABLE = {"zero.jpg", "truncated.jpg", "text.jpg", "bomb.png"}


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_messy_folder_every_readable_image_extracted_every_other_recorded(messy_folder, tiny_backbone, tmp_path,
                                                                          decoder, caplog):
    t0 = time.perf_counter()
    with caplog.at_level("INFO", logger="featx"):
        result = extract(ImageFolderSource(messy_folder, **NO_SPLIT), tiny_backbone, out=tmp_path / "m.h5",
                         batch_size=4, progress=False, decoder=decoder)
    logs = [r.getMessage() for r in caplog.records if r.name == "featx"]
    assert time.perf_counter() - t0 < 60, "the decompression bomb is refused, not decoded"
    train = open_features(result.path)["train"]
    ids = list(train.ids)
    assert {i.split("/")[-1] for i in ids} == READABLE, "hidden files, Thumbs.db, .txt and loop copies excluded"
    assert len(ids) == len(set(ids)) == len(READABLE), "the symlink loop adds nothing twice"
    assert all(i.startswith("good/") for i in ids)
    X = train.X
    assert np.isfinite(X).all() and (np.abs(X).sum(axis=1) > 0).all(), "no zero (or NaN) rows"
    reasons = {s["id"].split("/")[-1]: s["reason"] for s in train.skipped}
    assert set(reasons) == UNREADABLE and result.n_skipped == 4
    assert "DecompressionBomb" in reasons["bomb.png"]
    assert any("no readable image of class(es) bad" in line for line in logs)
    # duplicates are separate items with the same features
    np.testing.assert_allclose(X[ids.index("good/duplicate.jpg")], X[ids.index("good/plain.jpg")], rtol=1e-5)


def test_exif_orientation_is_applied_and_16_bit_is_scaled(messy_folder, tiny_backbone):
    source = ImageFolderSource(messy_folder, **NO_SPLIT)
    assert source.open(str(messy_folder / "good" / "exif_rotated.jpg")).size == (30, 60)  # stored as 60x30
    sixteen = source.open(str(messy_folder / "good" / "sixteen_bit.png"))
    from featx.data.decoding import RGBTransform

    rgb = np.asarray(RGBTransform(lambda im: im)(sixteen))
    assert rgb.shape == (40, 40, 3) and 60 < rgb.mean() < 200, "scaled to 8 bits, not clipped to white"
    gif = source.open(str(messy_folder / "good" / "animated.gif"))
    assert getattr(gif, "n_frames", 1) >= 1 and gif.size == (40, 40)


def test_strict_fails_before_anything_is_complete(messy_folder, tiny_backbone, tmp_path):
    with pytest.raises(FeatxError, match="strict: bad/.* is unreadable"):
        extract(ImageFolderSource(messy_folder, **NO_SPLIT), tiny_backbone, out=tmp_path / "s.h5", progress=False,
                strict=True)
    assert not (tmp_path / "s.h5").exists()


def test_a_changed_image_changes_the_cache_key(image_folder, tiny_backbone):
    key = cache_key(ImageFolderSource(image_folder), tiny_backbone, "fp32")
    target = sorted((image_folder / "circle").glob("*.jpg"))[0]
    draw("square", np.random.default_rng(5)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache_key(ImageFolderSource(image_folder), tiny_backbone, "fp32") != key


# -- processes: kill -9, Ctrl-C, two writers, a reader, a full disk ---------------------------------------
def _cmd(folder, out, *extra):
    return [sys.executable, "-m", "featx", "extract", "--data", str(folder), "--backbone", TINY, "--weights", "none",
            "--batch-size", "2", "--no-progress", "--reuse", "none", "--out", str(out), *extra]


def _committed(partial: Path) -> int:
    import h5py

    try:
        with h5py.File(partial, "r", locking=False) as f:
            return sum(int(f[s].attrs["n_committed"]) for s in f if s != "classes")
    except (OSError, KeyError):
        return 0


def _wait_for_rows(proc, partial: Path, at_least: int = 1, timeout: float = 120) -> bool:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if partial.exists() and _committed(partial) >= at_least:
            return True
        time.sleep(0.05)
    return False


def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(image_folder, tmp_path):
    ref = tmp_path / "ref.h5"
    subprocess.run(_cmd(image_folder, ref), check=True, capture_output=True)
    out = tmp_path / "killed.h5"
    partial = Path(str(out) + ".partial")
    rng = np.random.default_rng(7)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(_cmd(image_folder, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_for_rows(proc, partial, at_least=_committed(partial) + 1):
            time.sleep(rng.uniform(0, 0.5))
            proc.send_signal(signal.SIGKILL)
            kills += proc.wait() == -signal.SIGKILL
        proc.wait()
        if out.exists():
            break
        with pytest.raises(FeatxError, match="incomplete|does not exist"):
            open_features(partial if partial.exists() else out)
    assert kills >= 1
    done = subprocess.run(_cmd(image_folder, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = open_features(ref), open_features(out)
    for s in a.splits:
        np.testing.assert_array_equal(a[s].ids, b[s].ids)
        np.testing.assert_array_equal(a[s].y, b[s].y)
        np.testing.assert_allclose(a[s].X, b[s].X, rtol=1e-5, atol=1e-6)


def test_ctrl_c_is_one_line_saying_how_far_and_that_it_resumes(tmp_path):
    out = tmp_path / "c.h5"
    # still running when the signal comes: reading the partial file beside its writer often fails (the poll then
    # sees 0 rows), so under load the first rows can be seen late; 450 images leave a wide margin
    many = make_folder(tmp_path / "many", per_class=150)
    # A shell that started us in the background may have SIGINT ignored (or blocked), and children inherit both:
    # the child gets the slate a terminal gives it.
    def sigint_as_a_terminal_sends_it():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([*_cmd(many, out, "--batch-size", "1"), "--backbone", "resnet18"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_a_terminal_sends_it)
    assert _wait_for_rows(proc, Path(str(out) + ".partial"))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("data:", "pipeline:"))]
    assert len(lines) == 1 and "interrupted after" in lines[0] and "next run resumes" in lines[0], err
    assert "Traceback" not in err


def test_second_writer_refused_while_a_reader_works_on_another_cache(image_folder, tiny_backbone, tmp_path):
    other = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "other.h5", progress=False).path
    out = tmp_path / "busy.h5"
    many = make_folder(tmp_path / "many", per_class=80)  # slow enough to still run when the second starts
    first = subprocess.Popen([*_cmd(many, out, "--batch-size", "1"), "--backbone", "resnet18"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for_rows(first, Path(str(out) + ".partial"))
        second = subprocess.run([*_cmd(many, out), "--backbone", "resnet18"], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 1 and "another featx process is writing" in second.stderr
        assert "Traceback" not in second.stderr
        fs = open_features(other)  # a reader of another cache is not disturbed
        assert fs["train"].X.shape[0] == len(fs["train"])
        info = run_cli("info", Path(str(out) + ".partial"))
        assert info.exit_code == 0 and "complete" in info.output
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    assert open_features(out).splits


def test_disk_full_is_a_clear_error_and_the_partial_resumes(image_folder, tmp_path):
    ref = tmp_path / "ref.h5"
    subprocess.run(_cmd(image_folder, ref), check=True, capture_output=True)
    out = tmp_path / "full.h5"
    limit = 4 << 20  # featx wants ~3.4 MiB of headroom: the first batch fits, the file grows, a later one does not

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run(_cmd(image_folder, out), capture_output=True, text=True, preexec_fn=small_disk)
    assert full.returncode == 1, full.stderr
    lines = [line for line in full.stderr.splitlines() if line.startswith("featx: error:")]
    assert len(lines) == 1 and "could not write" in lines[0] and "is full" in lines[0] and "run again" in lines[0]
    assert "Traceback" not in full.stderr and not out.exists()
    assert _committed(Path(str(out) + ".partial")) > 0, "the batches written before are kept"
    again = subprocess.run(_cmd(image_folder, out), capture_output=True, text=True)
    assert again.returncode == 0 and "resuming" in again.stderr, again.stderr
    np.testing.assert_allclose(open_features(out)["train"].X, open_features(ref)["train"].X, rtol=1e-5, atol=1e-6)


def test_damaged_cache_files_are_reported_not_read(image_folder, tiny_backbone, tmp_path):
    import h5py

    good = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "good.h5", progress=False).path
    flipped = tmp_path / "flipped.h5"
    shutil.copy(good, flipped)
    with h5py.File(flipped, "r") as f:
        offset = f["train/features"].id.get_chunk_info(0).byte_offset
    with open(flipped, "r+b") as f:
        f.seek(offset + 100)
        f.write(bytes(b ^ 0xFF for b in f.read(16)))
    one_line_error(run_cli("info", flipped), "damaged")
    one_line_error(run_cli("fit", flipped, "--head", "logreg", "--out", tmp_path / "h.joblib"), "damaged")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    one_line_error(run_cli("info", truncated), "damaged")
    one_line_error(run_cli("fit", truncated, "--head", "logreg"), "damaged")


class _RunsCode:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious shared head would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_head_that_would_run_code_is_refused_and_never_executed(image_folder, tiny_backbone, tmp_path):
    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    head = tmp_path / "h.skops"
    assert run_cli("fit", cache, "--head", "logreg", "--out", head).exit_code == 0
    est, card = load_head(head)  # featx's own format: loads with no --trust
    assert card["head_format"] == "skops" and hasattr(est, "predict")
    marker = tmp_path / "code-ran"
    for name in ("evil.joblib", "evil.skops"):  # a pickle, whatever its name; the card even matches it
        evil = tmp_path / name
        joblib.dump(_RunsCode(marker), evil)
        evil.with_suffix(".json").write_text(json.dumps({**card, "head_sha256": file_sha256(evil)}))
        with pytest.raises(FeatxError, match="is a pickle"):
            load_head(evil)
        one_line_error(run_cli("predict", "--head-file", evil, image_folder), "is a pickle")
        assert not marker.exists()
    load_head(tmp_path / "evil.joblib", trust=True)  # the user's explicit choice: it runs
    assert marker.exists()


def test_a_skops_head_with_untrusted_types_or_changed_after_fit_is_refused(image_folder, tiny_backbone, tmp_path):
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    head = tmp_path / "h.skops"
    assert run_cli("fit", cache, "--head", "svm", "--out", head).exit_code == 0
    est, card = load_head(head)
    sio.dump(Pipeline([("f", FunctionTransformer(os.system)), ("clf", est[-1])]), head)  # a swapped head
    with pytest.raises(FeatxError, match="does not match its card"):
        load_head(head)
    head.with_suffix(".json").write_text(json.dumps({**card, "head_sha256": file_sha256(head)}))
    with pytest.raises(FeatxError, match="types featx does not trust.*system"):
        load_head(head)
    head.with_suffix(".json").unlink()  # a card is not needed to load a safe head, but the types are checked
    with pytest.raises(FeatxError, match="types featx does not trust"):
        load_head(head)


def test_manifest_paths_cannot_escape_unless_allowed(tmp_path):
    make_folder(tmp_path / "outside", per_class=2)
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "list.csv"
    manifest.write_text("".join(f"../outside/{p.parent.name}/{p.name},{p.parent.name}\n"
                                for p in sorted((tmp_path / "outside").glob("*/*"))))
    with pytest.raises(FeatxError, match="outside the manifest's folder"):
        ManifestSource(manifest).splits()
    assert len(ManifestSource(manifest, allow_outside=True, val_fraction=0, test_fraction=0).splits()["train"]) == 6


@pytest.mark.parametrize("args,fragment", [
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "meta"], "device 'meta' is not supported"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--device", "gpu0"], "unknown device 'gpu0'"),
])
def test_bad_devices_are_one_line(image_folder, tmp_path, args, fragment):
    one_line_error(run_cli("extract", "--data", image_folder, "--backbone", TINY, "--weights", "none", *args,
                           "--out", tmp_path / "x.h5"), fragment, status=2)
    assert not list(tmp_path.glob("x.h5*")), "a refused run writes nothing"


@pytest.mark.parametrize("text,fragment", [
    ('[extract]\nprecision = "fp33"\n', "unknown precision 'fp33' (choose from fp32, bf16, fp16)"),
    ('[extract]\nbatch_size = -4\n', "expected a positive number of images"),
    ('[extract]\ndevice = "cuda:x"\n', "unknown device 'cuda:x' (use cpu, cuda or cuda:N)"),
    ('[source]\nval_fraction = 1.5\n', "expected a fraction"),
    ('[source]\ndatta = "x"\n', "has no key 'datta'"),
])
def test_typos_in_pipeline_files_are_one_line(tmp_path, text, fragment):
    p = tmp_path / "p.toml"
    p.write_text(text)
    one_line_error(run_cli("extract", "--pipeline", p), fragment, status=2)


# -- property-based: no input makes the parsers raise anything but FeatxError ----------------------------
_KEYS = ["data", "root", "download", "val_fraction", "test_fraction", "seed", "limit", "name", "weights", "layer",
         "batch_size", "workers", "device", "precision", "channels_last", "dir", "C", "nosuch"]
_VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                    st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=st.lists(st.tuples(st.sampled_from(["source", "backbone", "extract", "cache", "heads.svm", "grid.logreg",
                                                  "heads.nope", "other"]),
                                 st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=4)), max_size=4),
       noise=st.text(max_size=30))
def test_pipeline_parsing_raises_only_featx_errors(tmp_path, tables, noise):
    text = "".join(f"[{t}]\n" + "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in kv) for t, kv in tables)
    p = tmp_path / "fuzz.toml"
    for body in (text, text + noise, noise):
        p.write_text(body, encoding="utf-8", errors="surrogatepass")
        try:
            load_pipeline(p)
        except FeatxError:
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(st.text(max_size=10), min_size=0, max_size=4), max_size=8),
       raw=st.binary(max_size=60))
def test_manifest_parsing_raises_only_featx_errors(tmp_path, rows, raw):
    folder = tmp_path / "fuzz"
    if not folder.exists():
        make_folder(folder, per_class=1)
    manifest = folder / "list.csv"
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    for body in (buf.getvalue().encode("utf-8", "surrogatepass"), raw,
                 b"path,label\ncircle/circle_000.png," + raw + b"\n"):
        manifest.write_bytes(body)
        try:
            ManifestSource(manifest).splits()
        except FeatxError:
            pass


def test_without_skops_fit_saves_a_pickle_and_says_so(image_folder, tiny_backbone, tmp_path, monkeypatch, caplog):
    import featx.heads.persist as persist

    cache = extract(ImageFolderSource(image_folder), tiny_backbone, out=tmp_path / "c.h5", progress=False).path
    monkeypatch.setattr(persist, "_skops", lambda: None)
    result = run_cli("fit", cache, "--head", "logreg", "--out", tmp_path / "h.skops", "--no-baselines")
    assert result.exit_code == 0 and "skops is not installed" in result.stderr
    assert json.loads((tmp_path / "h.json").read_text())["head_format"] == "joblib"
    with pytest.raises(FeatxError, match="is a pickle"):
        load_head(tmp_path / "h.skops")
    assert hasattr(load_head(tmp_path / "h.skops", trust=True)[0], "predict")
