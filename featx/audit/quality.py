"""Image-quality checks in ``featx audit``: dark, light, blurry, low information, odd aspect ratio, odd size, and
grayscale in a colour dataset, through CleanVision (the ``quality`` extra: cleanlab's image checks, rather than
featx's own formulas) -- except blur, see :func:`edge_blur`.

The property of each image is computed from the pixels the audit's thumbnail pass already reads (CleanVision's
``ImageProperty.calculate`` on the decoded image, before it is shrunk; the size and aspect ratio from the image as
stored), not by a second read of the dataset. Scores are CleanVision's (``get_scores``: lower is worse, in
[0, 1]); an item is flagged when its score is below the check's threshold in :data:`THRESHOLDS`, chosen by featx on
problems planted into scikit-learn's sample photos and validated on scikit-image's photos, never used to choose
(``bench/bench_quality.py``, docs/audit.md). Grayscale is only flagged in a dataset whose images are mostly colour.
"""

from __future__ import annotations

import importlib.util
import math

__all__ = ["CHECKS", "QualityStats", "available", "edge_blur", "held_out"]

#: The checks, in report order.
CHECKS = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size", "grayscale")
#: Grayscale images are flagged only when at most this share of the dataset is grayscale.
GRAYSCALE_MAX_SHARE = 0.5
#: Items listed per check in the record (the counts are always whole).
MAX_LISTED = 500
#: Flag below these scores. CleanVision's defaults (dark 0.32, light 0.05, blurry 0.29, low information 0.3, odd
#: aspect ratio 0.35, odd size 0.5, grayscale 0/1) missed planted blur, lightening and flattening on photo tiles
#: (bench/bench_quality.py); these were chosen on problems planted into scikit-learn's two sample photos (the
#: threshold with the best F1 of planted against clean tiles) and validated on other photos. Blurry's score is
#: featx's (:func:`edge_blur`: ``1 / (1 + sigma)``; 0.4933 is a blur of 1.03 px).
THRESHOLDS = {"dark": 0.1584, "light": 0.1081, "blurry": 0.4933, "low_information": 0.449, "odd_aspect_ratio": 0.6146,
              "odd_size": 0.6042, "grayscale": 0.5}
#: Each check measured on photos never used to choose (bench/bench_quality.py): (planted items found, planted,
#: flagged). Recall and precision get 95% Wilson intervals; a check is *reliable* when both lower bounds clear
#: :data:`TARGET` (recall 0.9, precision 0.8), *not reliable* when either upper bound falls short, else *can't tell*.
#: Blurry: on scikit-image's grey photographs + matplotlib's Grace Hopper (475 tiles) and OpenCV's sample photographs
#: (2,216 tiles), both kept apart while :func:`edge_blur` was designed (on scikit-learn's and scikit-image's colour
#: photos, where CleanVision's edge-strength score had failed: recall 0.10, precision 0.09); every planted blur is
#: found, and the 27 unplanted flags are out-of-focus backgrounds and a soft microscope image (docs/audit.md), which
#: the planted labels count as clean: can't tell. The others: scikit-image's colour photos (1,428 tiles, 61 planted per
#: problem, 2026-12-01); low information flags some near-flat clean tiles: can't tell (precision 0.76, 0.66 .. 0.84).
HELD_OUT = {"dark": (61, 61, 61), "light": (61, 61, 61), "blurry": (114, 114, 141), "low_information": (61, 61, 80),
            "odd_aspect_ratio": (61, 61, 61), "odd_size": (61, 61, 61), "grayscale": (61, 61, 61)}
#: Blur is judged on the image shrunk to at most this many pixels on its longer side: blur at about the size the
#: backbone sees (224-256 px), at a bounded cost (6 ms an image at 256 px on one core, 30 ms at 512).
BLUR_SIDE = 256
#: Canny's hysteresis thresholds (gradient magnitude, grey levels) for the edges whose width is measured; an image
#: with fewer than ``BLUR_MIN_EDGES`` edge pixels has nothing to judge and is never flagged blurry.
BLUR_CANNY = (4.0, 8.0)
BLUR_MIN_EDGES = 5
#: The recall and precision a reliable check reaches on held-out photos (issue 29).
TARGET = {"recall": 0.9, "precision": 0.8}


def held_out(check: str) -> dict:
    """A check's held-out recall and precision, each with its 95% Wilson interval, and the verdict (see
    :data:`HELD_OUT`)."""
    from scipy.stats import binomtest

    found, planted, flagged = HELD_OUT[check]
    out = {}
    for name, k, n in (("recall", found, planted), ("precision", found, flagged)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        out[name] = {"value": round(k / n, 3), "ci": [round(ci.low, 3), round(ci.high, 3)], "n": n}
    if all(out[m]["ci"][0] >= TARGET[m] for m in TARGET):
        verdict = "reliable"
    elif any(out[m]["ci"][1] < TARGET[m] for m in TARGET):
        verdict = "not reliable"
    else:
        verdict = "can't tell"
    return {**out, "verdict": verdict, "rule": "reliable when the 95% Wilson lower bounds of held-out recall and "
            "precision reach 0.9 and 0.8; not reliable when an upper bound falls short; else can't tell"}


def edge_blur(img) -> float:
    """The blur of an image in pixels (a Gaussian's sigma; ``inf`` when it has no edges to judge): the re-blur
    gradient ratio of Zhuo & Sim (2011, "Defocus map estimation from a single image") at Canny edges -- an edge
    blurred by sigma keeps ``R = |grad I| / |grad (I * g_1)| = sqrt(sigma^2 + 1) / sigma`` of its gradient after a
    unit re-blur, whatever its contrast -- and the 10th percentile over the edge pixels (the sharpest edges: a photo
    in focus has some). CleanVision's blur score (edge *strength*) and scikit-image's ``blur_effect`` (a re-blur ratio
    over the whole image) could not tell a blurred photo from a smooth sharp one on held-out photos; an edge's width
    can, as long as the image has edges (a smooth synthetic gradient has none that are sharp, and is blurry to it)."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage
    from skimage.feature import canny

    grey = img.convert("L")
    if max(grey.size) > BLUR_SIDE:
        grey = grey.copy()
        grey.thumbnail((BLUR_SIDE, BLUR_SIDE), Image.Resampling.LANCZOS)
    a = np.asarray(grey, np.float32)
    if min(a.shape) < 8:
        return float("inf")
    edges = canny(a, sigma=1.0, low_threshold=BLUR_CANNY[0], high_threshold=BLUR_CANNY[1])
    if int(edges.sum()) < BLUR_MIN_EDGES:
        return float("inf")
    def gradient(img):
        return np.hypot(ndimage.sobel(img, 1), ndimage.sobel(img, 0))[edges]

    ratio = gradient(a) / np.maximum(gradient(ndimage.gaussian_filter(a, 1.0)), 1e-6)
    sigma = 1.0 / np.sqrt(np.maximum(ratio ** 2 - 1.0, 1e-6))
    return float(np.percentile(sigma, 10))


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("cleanvision", "skimage"))


class QualityStats:
    """Collects CleanVision's raw image properties during the thumbnail pass (``add``), then flags (``record``)."""

    def __init__(self):
        from cleanvision.issue_managers.image_property_issue_manager import ImagePropertyIssueManager

        manager = ImagePropertyIssueManager()
        self.properties, self.params = manager.image_properties, manager.params
        self.rows: dict[int, dict] = {}

    def add(self, n: int, img, stored_size: tuple[int, int] | None = None) -> None:
        """The properties of item ``n`` from its decoded image (``stored_size``: its size as stored, when ``img``
        was decoded at a reduced scale)."""
        w, h = stored_size or img.size
        raw = {"aspect_ratio": min(w / h, h / w), "size": math.sqrt(w) * math.sqrt(h)}
        for check in ("dark", "low_information", "grayscale"):  # dark's property also holds light's
            raw.update(self.properties[check].calculate(img.convert("RGB") if check == "dark" and img.mode not in
                                                        ("RGB", "L") else img))
        raw["blur_px"] = edge_blur(img)
        self.rows[n] = raw

    def scores(self):
        """``(N, checks)`` scores (CleanVision's ``get_scores``; lower is worse) of the items seen, by item index."""
        import numpy as np
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.rows, orient="index").sort_index()
        out = pd.DataFrame(index=frame.index)
        for check in CHECKS:
            if check == "blurry":  # 1 / (1 + sigma): 0.5 at one pixel, near 1 when sharp; 1 without edges to judge
                sigma = frame["blur_px"].astype(float)
                out[check] = (1.0 / (1.0 + sigma)).where(np.isfinite(sigma), 1.0)
                continue
            params = {k: v for k, v in self.params.get(check, {}).items() if k != "threshold"}
            out[check] = self.properties[check].get_scores(frame, check, **params).iloc[:, 0].astype(float)
        out.attrs["grayscale_share"] = float((frame["color_space"] == "L").mean())
        return out

    def record(self, ids: list[str], splits, thresholds: dict | None = None) -> dict:
        """``{"checks": {check: {"count", "threshold", "items": [{id, split, score}]}}, ...}``."""
        if not self.rows:
            return {"computed": False, "note": "no image could be read"}
        thresholds = {**THRESHOLDS, **(thresholds or {})}
        scores = self.scores()
        grey_share = scores.attrs["grayscale_share"]
        out = {}
        for check in CHECKS:
            if check == "grayscale" and grey_share > GRAYSCALE_MAX_SHARE:
                out[check] = {"count": 0, "items": [], "note": f"{grey_share:.0%} of the images are grayscale: not a "
                                                                "colour dataset, none flagged"}
                continue
            score = scores[check]
            hit = score.index[(score < thresholds[check]).to_numpy()]
            items = sorted(({"id": ids[i], "split": str(splits[i]), "score": round(float(score.loc[i]), 4)}
                            for i in hit), key=lambda r: r["score"])
            measured = held_out(check)
            out[check] = {"count": len(items), "threshold": thresholds[check], "items": items[:MAX_LISTED],
                          "held_out": measured, "reliable": measured["verdict"] == "reliable"}
        from importlib.metadata import version

        return {"computed": True, "images": len(scores), "checks": out,
                "rule": f"CleanVision {version('cleanvision')} image property scores (blur: featx's edge width); flagged "
                        "below featx's thresholds (featx.audit.quality.THRESHOLDS, chosen on planted problems)"}
