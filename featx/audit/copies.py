"""Copies of the same picture, found on pixels: what ``featx audit`` counts as train/test leakage.

A penultimate-layer embedding describes what an image shows, not which image it is: on small images a JPEG
re-encode or a 1-pixel crop moves it further than the distance between two distinct items of the same kind
(docs/audit.md measures it on Fashion-MNIST: copies at cosine 0.80-0.96, distinct look-alikes up to 0.97).
A copy is the same pixels up to a resampling, a slight crop and compression, so featx checks that directly:

1. **Thumbnails**: every item in grey at :data:`SIDE` x :data:`SIDE` pixels (smaller images at their own size;
   camera JPEGs decoded at a reduced DCT scale).
2. **Candidates** (:func:`candidate_pairs`): a blurred 12 x 12 view of each item, and of its centre crops
   (:data:`CROPS` of each side cut off), compared by normalised correlation with blocked matrix products;
   every item's :data:`CANDIDATES` best matches over the crops of the others, kept when at least
   :data:`COARSE_MIN`. A copy cut from an original matches one of the original's crops.
3. **Verification** (:func:`register_pairs`): each candidate pair is registered, both ways round: a grid over
   scale (up to 30 % zoom; separable matrix products), with and without a slight blur of the sharper of the two
   (a resized copy is a blurred one), then the best start refined over scale and shift by batched gradient
   ascent of the normalised cross-correlation (torch ``grid_sample``). The score is the best correlation
   reached.
4. **Decision** (:func:`copy_decisions`): a pair at or above :data:`SURE_COPY` is a copy; one at or above
   :data:`COPY_THRESHOLD` is when it stands out: the two are at least twice as close (in 1 - score) to each
   other as either is to any third item. A featureless image (a blank scan, a patch of sky) has no picture to
   register: two are copies when their grey levels agree.

The thresholds are measured (``bench/bench_audit.py``, docs/audit.md) on re-encoded, resized and cropped
copies against the most similar distinct items of Fashion-MNIST, whose plain silhouettes are about the hardest
case there is for telling a copy from a look-alike.
"""

from __future__ import annotations

import logging

import numpy as np

from ..cache.index import self_top_k

log = logging.getLogger("featx")
__all__ = ["SIDE", "CROPS", "COPY_THRESHOLD", "SURE_COPY", "MARGIN", "COARSE_MIN", "CANDIDATES", "thumbnails",
           "candidate_pairs", "register_pairs", "runner_up", "copy_decisions", "find_copies"]

#: Side of the grey thumbnails compared (images smaller than this are compared at their own size).
SIDE = 32
#: Fractions of each side cut off for the centre crops the candidate search also indexes.
CROPS = (0.0, 0.04, 0.08, 0.12)
#: Side of the blurred view the candidate search compares.
COARSE_SIDE = 12
#: Candidate pairs kept per item, and the least coarse correlation a candidate needs.
CANDIDATES = 5
COARSE_MIN = 0.95
#: Registration: the scales of the starting grid (the warped image is sampled inside itself, so that a zoom in
#: of up to 1 / 0.76 = 1.3 is modelled); the blur (pixels, sigma) that may be put on the sharper of the two
#: (a resized or re-encoded copy is blurrier than its original, and so is an original zoomed into); the
#: refinement's steps.
SCALES = tuple(np.linspace(0.76, 1.0, 13).round(4))
BLUR = 0.7
STEPS = 40
#: A registration score at or above this is a copy when the pair stands out (:func:`copy_decisions`), at or
#: above SURE_COPY in any case (docs/audit.md: re-encoded, resized and cropped copies of Fashion-MNIST items
#: against the closest distinct items).
COPY_THRESHOLD = 0.988
SURE_COPY = 0.998
MARGIN = 0.5
#: Pairs the grid stage must reach before they are refined.
GRID_MIN = 0.97
#: Thumbnails whose grey levels vary less than this (standard deviation, 2 of 255 levels) show no picture, only
#: noise and compression: two of them are the same when their mean grey levels are within :data:`FLAT_STD`.
FLAT_STD = 2 / 255
#: Pairs registered per batch (memory: a few MB per thousand pairs at 32 x 32).
BATCH = 4096


def _side(sizes) -> int:
    small = min(min(s) for s in sizes)
    return int(min(SIDE, max(8, small)))


def _grey(img):
    from ..data.decoding import to_rgb

    return to_rgb(img).convert("L")


def thumbnails(opener, keys, *, side: int | None = None, progress=None, inspect=None):
    """``(N, side, side)`` float32 grey thumbnails in [0, 1] of ``opener(key)`` for every key, and the
    positions that could not be read (their rows are NaN). ``side`` defaults to :data:`SIDE`, or the
    smallest short side of the first 64 items when that is smaller. Each image is shrunk as soon as it is
    read (memory stays at the thumbnails'). ``progress(done, total, label)`` is called as items are read;
    ``inspect(n, image)`` sees each decoded image before it is shrunk (the quality checks)."""
    from PIL import Image

    keys = list(keys)
    if inspect is not None:
        def opener(key, _open=opener, _index={k: n for n, k in enumerate(keys)}):
            img = _open(key)
            try:
                inspect(_index[key], img)
            except Exception as exc:  # a property that cannot be computed: the item is still read
                log.info(f"note: quality check of {key}: {exc}")
            return img
    first: dict[int, object] = {}
    if side is None:
        for n, key in enumerate(keys[:64]):
            try:
                first[n] = _grey(opener(key))
            except Exception:  # an unreadable item: recorded below, never fatal
                first[n] = None
        side = _side([im.size for im in first.values() if im is not None] or [(SIDE, SIDE)])
    out = np.full((len(keys), side, side), np.nan, np.float32)
    bad = []
    for n, key in enumerate(keys):
        if n in first:
            im = first.pop(n)
        else:
            try:
                im = _grey(opener(key))
            except Exception:
                im = None
        if im is None:
            bad.append(n)
        else:
            if im.size != (side, side):
                im = im.resize((side, side), Image.Resampling.BILINEAR)
            out[n] = np.asarray(im, np.float32) / 255.0
        if progress is not None and (n % 1000 == 999 or n == len(keys) - 1):
            progress(n + 1, len(keys), "audit: reading thumbnails")
    return out, bad


def _axis_blur(n: int, sigma: float):
    """The ``n x n`` matrix of a 1-D Gaussian blur with the edges replicated."""
    import torch

    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    G = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    for d, w in zip(range(-r, r + 1), k):
        G[rows, (rows + d).clamp(0, n - 1)] += w
    return G.float()


def _axis_scale(n: int, scale: float):
    """The ``n x n`` matrix that samples a row at ``scale`` about its centre, bilinearly, edges replicated: what
    ``grid_sample`` (``align_corners=False``, border padding) does along one axis for a zoom without shift."""
    import torch

    out = (2 * torch.arange(n, dtype=torch.float64) + 1) / n - 1
    x = ((scale * out + 1) * n - 1) / 2
    x = x.clamp(0, n - 1)
    lo = x.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = x - lo
    M = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    M[rows, lo] += 1 - w
    M[rows, hi] += w
    return M.float()


def _apply(M, X):
    """``M X M^T`` for every image of ``X`` (``(B, 1, n, n)``): a separable linear filter, as matrix products."""
    return M @ X @ M.T


def _blur(x, sigma: float):
    """Gaussian blur of ``(B, 1, n, n)`` tensors (edges replicated)."""
    if not sigma:
        return x
    return _apply(_axis_blur(x.shape[-1], sigma), x)


def _coarse(thumbs: np.ndarray) -> np.ndarray:
    """``(N, len(CROPS), COARSE_SIDE**2)``: each crop blurred, shrunk and normalised (zero mean, unit norm)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.nan_to_num(thumbs))[:, None]
    side = t.shape[-1]
    views = []
    for f in CROPS:
        c = int(round(f * side)) if f else 0
        v = t[:, :, c:side - c, c:side - c] if c else t
        v = _blur(F.interpolate(v, size=(side, side), mode="bilinear", align_corners=False), side / 32)
        views.append(F.interpolate(v, size=(COARSE_SIDE, COARSE_SIDE), mode="area").flatten(1))
    D = torch.stack(views, 1)
    D = D - D.mean(-1, keepdim=True)
    return (D / (D.norm(dim=-1, keepdim=True) + 1e-6)).numpy()


def candidate_pairs(thumbs: np.ndarray, *, k: int = CANDIDATES, min_score: float = COARSE_MIN,
                    block: int = 512) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, whose coarse views correlate at least ``min_score``: each item's ``k`` best
    matches among the others' whole views and centre crops."""
    D = _coarse(thumbs)
    n = len(D)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((0, 2), np.int64)

    def similarity(lo: int, hi: int) -> np.ndarray:  # the best over the whole view and its centre crops
        S = D[lo:hi, 0] @ D[:, 0].T
        for c in range(1, D.shape[1]):
            np.maximum(S, D[lo:hi, 0] @ D[:, c].T, out=S)
        return S

    sims, idx = self_top_k(n, k, similarity, block=block)
    keep = sims >= min_score
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    pairs = np.sort(np.stack([rows[keep], idx[keep]], 1), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _warp(B, params):
    """``B`` sampled at scale ``params[:, 0]`` and shift ``params[:, 1:]`` (torch's normalised coordinates; the
    sample stays inside ``B``)."""
    import torch
    import torch.nn.functional as F

    s, tx, ty = params.unbind(1)
    z = torch.zeros_like(s)
    theta = torch.stack([torch.stack([s, z, tx], 1), torch.stack([z, s, ty], 1)], 1)
    grid = F.affine_grid(theta, list(B.shape), align_corners=False)
    return F.grid_sample(B, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _corr(A, W):
    """Normalised cross-correlation of each image of ``A`` with the same of ``W``."""
    a = A - A.mean((2, 3), keepdim=True)
    w = W - W.mean((2, 3), keepdim=True)
    return (a * w).sum((1, 2, 3)) / ((a * a).sum((1, 2, 3)).sqrt() * (w * w).sum((1, 2, 3)).sqrt() + 1e-8)


def _detail(X):
    """Share of each image's variance in fine detail (what a blur of :data:`BLUR` removes)."""
    c = X - X.mean((2, 3), keepdim=True)
    return ((X - _blur(X, BLUR)) ** 2).sum((1, 2, 3)) / ((c * c).sum((1, 2, 3)) + 1e-8)


def _clamp(p):
    import torch

    p[:, 0].clamp_(SCALES[0], 1.0)
    room = 1.0 - p[:, 0]
    p[:, 1] = torch.maximum(torch.minimum(p[:, 1], room), -room)
    p[:, 2] = torch.maximum(torch.minimum(p[:, 2], room), -room)


def _register_batch(T, pairs: np.ndarray):
    """Scores of one batch: a grid over scale (no shift), with and without blurring the sharper side, both ways
    round; then the pairs above :data:`GRID_MIN` refined by gradient ascent over scale and shift."""
    import torch

    a = torch.from_numpy(pairs[:, 0])
    b = torch.from_numpy(pairs[:, 1])
    best = torch.full((len(pairs),), -2.0)
    start = torch.zeros((len(pairs), 3))
    way = torch.zeros(len(pairs), dtype=torch.long)  # 0: a fixed, b warped; 1: the other way round
    blurred = torch.zeros(len(pairs), dtype=torch.long)  # 0: neither, 1: the fixed image, 2: the warped one

    def keep(v, p, w, mode):
        nonlocal best
        better = v > best
        best = torch.where(better, v, best)
        start[better] = p[better]
        way[better] = w
        blurred[better] = mode[better] if torch.is_tensor(mode) else mode

    n = T.shape[-1]
    G = _axis_blur(n, BLUR)
    with torch.no_grad():
        for w, (fix, mov) in enumerate(((a, b), (b, a))):
            A, B = T[fix], T[mov]
            A_soft, A_detail = _apply(G, A), _detail(A)
            for s in SCALES:  # a zoom without shift is separable: two small matrix products per image
                p = torch.tensor([float(s), 0.0, 0.0]).repeat(len(pairs), 1)
                M = _axis_scale(n, float(s))
                W = _apply(M, B)
                keep(_corr(A, W), p, w, 0)
                fixed_sharper = (A_detail > _detail(W)).view(-1, 1, 1, 1)
                v = _corr(torch.where(fixed_sharper, A_soft, A), torch.where(fixed_sharper, W, _apply(M @ G, B)))
                keep(v, p, w, torch.where(fixed_sharper.flatten(), 1, 2))
    refine = torch.nonzero(best >= GRID_MIN).flatten()
    if len(refine):
        fix = torch.where(way[refine] == 0, a[refine], b[refine])
        mov = torch.where(way[refine] == 0, b[refine], a[refine])
        mode = blurred[refine].view(-1, 1, 1, 1)
        A = torch.where(mode == 1, _blur(T[fix], BLUR), T[fix])
        B = torch.where(mode == 2, _blur(T[mov], BLUR), T[mov])
        p = start[refine].clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.005)
        top = best[refine].clone()
        for _ in range(STEPS):
            opt.zero_grad()
            v = _corr(A, _warp(B, p))
            (-v.sum()).backward()
            top = torch.maximum(top, v.detach())
            opt.step()
            with torch.no_grad():
                _clamp(p)
        with torch.no_grad():
            best[refine] = torch.maximum(top, _corr(A, _warp(B, p)))
    return best.numpy()


def register_pairs(thumbs: np.ndarray, pairs: np.ndarray, *, batch: int = BATCH, progress=None) -> np.ndarray:
    """The registration score of every pair (rows of ``thumbs``): the best normalised cross-correlation over
    scale, shift and blur, either image warped. Pairs with an unreadable item score NaN; a pair with a
    featureless image (grey levels varying less than :data:`FLAT_STD`) scores 1.0 when both are featureless and
    of the same grey level, else 0.0."""
    import torch

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    T = torch.from_numpy(np.nan_to_num(thumbs))[:, None]
    scores = np.empty(len(pairs), np.float32)
    for lo in range(0, len(pairs), batch):
        scores[lo:lo + batch] = _register_batch(T, pairs[lo:lo + batch])
        if progress is not None:
            progress(min(lo + batch, len(pairs)), len(pairs), "audit: registering candidate pairs")
    grey = np.nan_to_num(thumbs).reshape(len(thumbs), -1)
    flat, level = grey.std(axis=1) < FLAT_STD, grey.mean(axis=1)
    i, j = pairs.T
    featureless = flat[i] | flat[j]
    scores[featureless] = (flat[i] & flat[j] & (np.abs(level[i] - level[j]) < FLAT_STD))[featureless]
    scores[np.isnan(thumbs[i, 0, 0]) | np.isnan(thumbs[j, 0, 0])] = np.nan
    return scores


def runner_up(pairs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """For each pair ``(i, j)``: the best score either ``i`` or ``j`` reaches with any third item among the
    pairs checked (0 when neither has another)."""
    top: dict[int, list[tuple[float, int]]] = {}  # item -> its two best (score, partner)
    for (i, j), s in zip(pairs.tolist(), np.nan_to_num(scores, nan=-1.0).tolist()):
        for x, other in ((i, j), (j, i)):
            best = top.setdefault(x, [])
            best.append((s, other))
            best.sort(reverse=True)
            del best[2:]

    def other_than(x, partner):
        return next((s for s, o in top.get(x, []) if o != partner), 0.0)

    return np.array([max(other_than(i, j), other_than(j, i), 0.0) for i, j in pairs.tolist()], np.float32)


def copy_decisions(pairs: np.ndarray, scores: np.ndarray, *, threshold: float = COPY_THRESHOLD,
                   sure: float = SURE_COPY, margin: float = MARGIN):
    """Which pairs are copies, and each pair's runner-up score (:func:`runner_up`). A pair is a copy at
    ``sure`` or above; from ``threshold`` up only when the two are distinctly closer to each other than either
    is to anything else: ``1 - score <= margin * (1 - runner_up)`` (Lowe's ratio test; copy-detection systems
    normalise scores by the nearest background neighbours for the same reason). In a crowd of look-alikes
    (plain trousers at 28 pixels) every item has a close match; a copy has one that stands out."""
    second = runner_up(pairs, scores)
    ok = np.nan_to_num(scores, nan=-1.0)
    sure = max(sure, threshold)
    copy = (ok >= sure) | ((ok >= threshold) & (1.0 - ok <= margin * (1.0 - second)))
    return copy, second


def find_copies(thumbs: np.ndarray, *, extra_pairs=None, threshold: float = COPY_THRESHOLD, progress=None):
    """Copies among the thumbnails: ``(pairs, scores, runner_ups, checked)`` with the pairs (``i < j``) that
    :func:`copy_decisions` calls copies at ``threshold``, their scores and runner-up scores, and how many
    candidate pairs were registered. ``extra_pairs`` (say, the embedding's near neighbours) are checked too."""
    pairs = candidate_pairs(thumbs)
    if extra_pairs is not None and len(extra_pairs):
        pairs = np.unique(np.concatenate([pairs, np.sort(np.asarray(extra_pairs, np.int64), axis=1)]), axis=0)
    if not len(pairs):
        return pairs, np.zeros(0, np.float32), np.zeros(0, np.float32), 0
    scores = register_pairs(thumbs, pairs, progress=progress)
    copy, second = copy_decisions(pairs, scores, threshold=threshold)
    return pairs[copy], scores[copy], second[copy], int(len(pairs))
