"""``featx map``: the embeddings on a 2-D map, one self-contained HTML page (issue 29).

The cache's rows (a seeded sample of at most ``sample``, in proportion to the splits, the sample size stated) are
L2-normalised and projected to 2-D with UMAP (``umap-learn``, the ``map`` extra; cosine metric, seeded) or, where
it is missing, PCA (said on the page and in ``map.json``). The page draws them on a canvas, coloured by label, by
split, by right/wrong (with a head) or by what an audit of the same cache flagged; a point shows its thumbnail,
id, label and split on hover. No server, no network: the data and the thumbnails are inside the page.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np

from ..report.projection import project_2d
from ..util import atomic_write, l2_normalise

__all__ = ["DEFAULT_SAMPLE", "build_map", "write_map"]

#: Points on a map unless asked: a few thousand stay responsive in a browser.
DEFAULT_SAMPLE = 5000
#: Thumbnail side in the page (pixels).
THUMB = 48


def _sample(fs, n: int, seed: int) -> dict[str, np.ndarray]:
    """split -> the sorted rows of a seeded sample of at most ``n`` rows, each split in proportion to its size."""
    sizes = {s: len(fs[s]) for s in fs.splits}
    total = sum(sizes.values())
    rng = np.random.default_rng(seed)
    out = {}
    for split, size in sizes.items():
        k = size if total <= n else max(1, round(n * size / total))
        out[split] = np.sort(rng.choice(size, size=min(k, size), replace=False))
    return out


def build_map(fs, *, sample: int = DEFAULT_SAMPLE, seed: int = 0, head=None, audit: dict | None = None,
              root: str = "cache/datasets", thumbnails: bool = True) -> dict:
    """The ``map.json`` record: the points (x, y, id, split, label, and where known prediction and audit flags),
    how they were projected, and (for the page) each point's thumbnail."""
    from .duplicates import open_source

    t0 = time.perf_counter()
    picks = _sample(fs, sample, seed)
    X = np.concatenate([fs[s][rows] for s, rows in picks.items() if len(rows)])
    order = [(s, int(r)) for s, rows in picks.items() for r in rows]  # the rows of X, in order
    ids = {s: fs[s].ids for s in fs.splits}
    labels = {s: fs[s].y for s in fs.splits}
    xy, method = project_2d(X, seed)
    points = [{"x": round(float(x), 5), "y": round(float(y), 5), "id": str(ids[s][r]), "split": s,
               "label": fs.classes[int(labels[s][r])] if labels[s][r] >= 0 else ""} for (s, r), (x, y) in zip(order, xy)]
    predicted = None
    if head is not None:
        predicted = head.predict(X)
        for p, c in zip(points, predicted):
            p["predicted"] = fs.classes[int(c)]
    gallery = _gallery(X, np.array([int(labels[s][r]) for s, r in order]), predicted, list(fs.classes))
    if audit:
        flags = _audit_flags(audit)
        for p in points:
            if p["id"] in flags:
                p["flag"] = flags[p["id"]]
    pictures = []
    source, keys, why = open_source(fs, root) if thumbnails else (None, None, "not asked for")
    if source is not None:
        from ..data.decoding import to_rgb
        from ..report.plots import thumbnail

        for p in points:
            try:
                pictures.append(thumbnail(to_rgb(source.open(keys[p["id"]])), THUMB))
            except Exception:  # unreadable here: that point has no picture
                pictures.append("")
    total = sum(len(fs[s]) for s in fs.splits)
    return {"cache": str(fs.path), "cache_key": fs.cache_key, "backbone": fs.meta.get("backbone"),
            "method": method, "seed": seed, "points": points, "n_points": len(points), "n_rows": total,
            "sampled": len(points) < total, "classes": list(fs.classes),
            "thumbnails": bool(pictures) or f"none: {why}", "gallery": gallery,
            "seconds": round(time.perf_counter() - t0, 2),
            "_pictures": pictures}


#: Items per class in the gallery's most and least typical rows, and examples per confused pair.
GALLERY_ITEMS = 4
#: Confused class pairs shown.
CONFUSED_PAIRS = 6


def _gallery(X: np.ndarray, y: np.ndarray, predicted, classes: list[str]) -> dict:
    """Per class, the point indices most and least typical (cosine to the class's mean embedding, over the sampled
    points); the most confused class pairs (by the head's predictions, else by the nearest class centre) with
    example points."""
    Z = l2_normalise(X)
    labelled = np.flatnonzero(y >= 0)
    present = sorted(set(y[labelled].tolist()))
    if not present:
        return {"classes": {}, "confused": [], "confusion_by": "none"}
    centres = l2_normalise(np.stack([Z[labelled[y[labelled] == c]].mean(axis=0) for c in present]))
    sims = Z @ centres.T
    own = {c: k for k, c in enumerate(present)}
    per_class = {}
    for c in present:
        rows = labelled[y[labelled] == c]
        typ = sims[rows, own[c]]
        order = rows[np.argsort(-typ)]
        per_class[classes[c]] = {"typical": order[:GALLERY_ITEMS].tolist(),
                                 "atypical": order[::-1][:GALLERY_ITEMS].tolist()}
    if predicted is not None:
        guess, by = np.asarray(predicted).astype(int), "the head's predictions"
    else:
        guess, by = np.array(present)[np.argmax(sims, axis=1)], "the nearest class centre"
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in labelled:
        if guess[i] != y[i]:
            pairs.setdefault((int(y[i]), int(guess[i])), []).append(int(i))
    top = sorted(pairs.items(), key=lambda kv: -len(kv[1]))[:CONFUSED_PAIRS]
    return {"classes": per_class, "confusion_by": by,
            "confused": [{"label": classes[a], "as": classes[b], "count": len(rows), "examples": rows[:GALLERY_ITEMS]}
                         for (a, b), rows in top]}


def _audit_flags(audit: dict) -> dict[str, str]:
    """id -> what the audit flagged it as (the first that applies: copy, label, outlier, a quality check)."""
    flags: dict[str, str] = {}
    for group in (audit.get("duplicates") or {}).get("groups") or []:
        for item in group:
            flags.setdefault(str(item["id"]), "copy")
    for item in audit.get("label_issues") or []:
        flags.setdefault(str(item["id"]), "label error?")
    for item in (audit.get("outliers") or {}).get("items") or []:
        flags.setdefault(str(item["id"]), "outlier")
    for name, check in ((audit.get("quality") or {}).get("checks") or {}).items():
        for item in check.get("items") or []:
            flags.setdefault(str(item["id"]), name.replace("_", " "))
    return flags


def write_map(out_dir: Path, record: dict) -> list[Path]:
    """``map.html`` (self-contained) and ``map.json`` (the points, without the pictures) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = record.pop("_pictures", [])
    paths = [out_dir / "map.json", out_dir / "map.html"]
    with atomic_write(paths[0]) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    data = json.dumps({**record, "pictures": pictures}).replace("</", "<\\/")
    with atomic_write(paths[1]) as tmp:
        tmp.write_text(_PAGE.replace("__TITLE__", html.escape(f"featx map: {Path(record['cache']).name}"))
                       .replace("__DATA__", data), encoding="utf-8")
    return paths


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:16px;color:#222}
#wrap{display:flex;gap:16px}#c{border:1px solid #ccc;cursor:crosshair}
#side{width:260px}#tip{min-height:90px}#tip img{width:96px;image-rendering:pixelated;border:1px solid #ddd}
.key{display:flex;align-items:center;gap:6px;margin:2px 0}.sw{width:12px;height:12px;border-radius:6px}
.row{display:flex;align-items:center;gap:4px;margin:4px 0}.row b{width:220px}.row img{width:48px;height:48px;
image-rendering:pixelated;border:1px solid #ddd}
</style></head><body>
<h1 id="h"></h1><p id="about"></p>
<label>colour by <select id="mode"></select></label>
<div id="wrap"><canvas id="c" width="760" height="760"></canvas><div id="side"><div id="tip">hover a point</div>
<div id="legend"></div></div></div>
<h2>Gallery</h2><p id="gabout"></p><div id="gallery"></div>
<script>
const D = __DATA__;
const P = D.points, C = document.getElementById("c"), g = C.getContext("2d");
const PAL = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf",
  "#393b79","#637939","#8c6d31","#843c39","#7b4173","#3182bd","#e6550d","#31a354","#756bb1","#636363"];
const modes = {label: p => p.label || "(unlabelled)", split: p => p.split};
if (P.some(p => "predicted" in p)) modes["right / wrong"] = p => p.predicted === p.label ? "right" : "wrong";
if (P.some(p => "flag" in p)) modes["audit flag"] = p => p.flag || "not flagged";
const sel = document.getElementById("mode");
for (const m in modes) { const o = document.createElement("option"); o.textContent = m; sel.appendChild(o); }
document.getElementById("h").textContent = document.title;
document.getElementById("about").textContent = P.length + " points" + (D.sampled ? " (a seeded sample of " +
  D.n_rows + " rows)" : "") + "; " + D.method + "; " + D.backbone + " features.";
let colours = {};
function draw() {
  const f = modes[sel.value]; const names = [...new Set(P.map(f))].sort(); colours = {};
  names.forEach((n, i) => colours[n] = PAL[i % PAL.length]);
  g.clearRect(0, 0, C.width, C.height);
  for (const p of P) { g.fillStyle = colours[f(p)]; g.beginPath();
    g.arc(10 + p.x * (C.width - 20), 10 + (1 - p.y) * (C.height - 20), 3, 0, 6.2832); g.fill(); }
  const L = document.getElementById("legend"); L.innerHTML = "";
  for (const n of names) { const d = document.createElement("div"); d.className = "key";
    const s = document.createElement("span"); s.className = "sw"; s.style.background = colours[n];
    const t = document.createElement("span"); t.textContent = n + " (" + P.filter(p => f(p) === n).length + ")";
    d.appendChild(s); d.appendChild(t); L.appendChild(d); }
  document.body.dataset.points = P.length;
}
C.addEventListener("mousemove", e => {
  const r = C.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
  let best = -1, bd = 64;
  P.forEach((p, i) => { const dx = 10 + p.x * (C.width - 20) - mx, dy = 10 + (1 - p.y) * (C.height - 20) - my;
    const d2 = dx * dx + dy * dy; if (d2 < bd) { bd = d2; best = i; } });
  const tip = document.getElementById("tip"); tip.innerHTML = "";
  if (best < 0) { tip.textContent = "hover a point"; return; }
  const p = P[best];
  if (D.pictures[best]) { const im = document.createElement("img"); im.src = "data:image/png;base64," + D.pictures[best];
    tip.appendChild(im); }
  const t = document.createElement("div");
  t.textContent = p.id + " | " + p.split + " | " + (p.label || "unlabelled") + ("predicted" in p ? " | predicted " +
    p.predicted : "") + (p.flag ? " | " + p.flag : "");
  tip.appendChild(t);
});
sel.addEventListener("change", draw); draw();
function pics(label, idx) {
  const r = document.createElement("div"); r.className = "row"; const b = document.createElement("b");
  b.textContent = label; r.appendChild(b);
  for (const i of idx) { if (!D.pictures[i]) continue; const im = document.createElement("img");
    im.src = "data:image/png;base64," + D.pictures[i]; im.title = P[i].id; im.className = "g"; r.appendChild(im); }
  document.getElementById("gallery").appendChild(r);
}
const G = D.gallery;
document.getElementById("gabout").textContent = "Per class: the items closest to the class's mean embedding " +
  "(typical) and farthest from it (atypical), among the points on the map; then the most confused pairs of " +
  "classes (by " + G.confusion_by + ") with examples." + (D.pictures.length ? "" : " No thumbnails: " + D.thumbnails);
for (const c in G.classes) { pics(c + ": typical", G.classes[c].typical); pics(c + ": atypical", G.classes[c].atypical); }
for (const q of G.confused) pics(q.label + " taken for " + q.as + " (" + q.count + ")", q.examples);
document.body.dataset.gallery = document.querySelectorAll("img.g").length;
</script></body></html>
"""
