"""The zero-shot head: a classifier built from class names and prompt templates by a vision-language backbone's text
tower (``clip:`` caches), with no training (Radford et al. 2021; OpenCLIP's ``build_zero_shot_classifier``).

Scores are ``logit_scale * normalise(x) @ W.T`` with ``W`` the L2-normalised text embeddings of the class names,
averaged over the templates: a linear head on L2-normalised features, so ``featx predict``, ``export-model`` and the
card treat it as one. The text embeddings are computed when the head is made (:func:`zeroshot_params`) and kept in
the head; predicting never needs the text tower again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import FeatxError, FeatxUsageError

__all__ = ["ZeroShotClassifier", "has_text_tower", "read_templates", "zeroshot_params"]


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """Class scores from fixed text embeddings (scikit-learn's estimator conventions; ``fit`` learns nothing).

    Args:
        text_weights: ``(n_classes, n_features)`` L2-normalised class embeddings, row ``c`` for class ``c``.
        logit_scale: the model's learnt temperature (``exp(logit_scale)``, 100 for CLIP).
    """

    def __init__(self, text_weights=None, logit_scale: float = 100.0):
        self.text_weights = text_weights
        self.logit_scale = logit_scale

    def check_params(self) -> None:
        if not (isinstance(self.logit_scale, (int, float)) and self.logit_scale > 0):
            raise ValueError(f"The 'logit_scale' parameter of ZeroShotClassifier must be a positive float. "
                             f"Got {self.logit_scale!r} instead.")

    def fit(self, X, y=None):
        """Take the text embeddings as the weights; ``X`` only checks the feature size (no training)."""
        self.check_params()
        if self.text_weights is None:
            raise ValueError("the zero-shot head needs text embeddings of the class names (featx fit --head zeroshot "
                             "computes them from the cache's text tower)")
        W = np.asarray(self.text_weights, dtype=np.float32)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != W.shape[1]:
            raise ValueError(f"the features are {X.shape[-1]}-d and the text embeddings {W.shape[1]}-d: not the same "
                             "model's towers")
        self.coef_ = float(self.logit_scale) * W
        self.intercept_ = np.zeros(W.shape[0], dtype=np.float32)
        self.classes_ = np.arange(W.shape[0])
        self.n_features_in_ = W.shape[1]
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_

    def predict_proba(self, X):
        z = self.decision_function(X)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


def has_text_tower(meta: dict) -> bool:
    """Whether a cache's backbone (its metadata) has a text tower: the ``clip:`` family's, at its own pooling."""
    return str(meta.get("backbone") or "").startswith("clip-") and not meta.get("pooling")


def read_templates(path: str | Path | None) -> list[str]:
    """Prompt templates: one per line of ``path`` with ``{}`` (or ``{c}``) where the class name goes; CLIP's 80
    ImageNet templates when ``path`` is ``None``."""
    if path is None:
        from ..backbones.clip_models import imagenet_templates

        return imagenet_templates()
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    templates = [line.replace("{c}", "{}") for line in lines if line and not line.startswith("#")]
    bad = [t for t in templates if t.count("{}") != 1 or "{" in t.replace("{}", "")]
    if not templates or bad:
        raise FeatxUsageError(f"--templates {path}: each line needs one {{}} where the class name goes"
                              f"{f' (not {bad[0]!r})' if bad else ' (the file has none)'}")
    return templates


def zeroshot_params(meta: dict, class_names: list[str], templates: list[str], *, device: str = "cpu") -> dict:
    """The zero-shot head's parameters for a cache: its class names through the text tower of the backbone that
    made it (rebuilt from the record; the weights' sha256 checked against it, as ``featx predict`` does)."""
    if not has_text_tower(meta):
        why = ("its features were pooled with --pooling, not as the text tower was trained" if meta.get("pooling")
               else f"its backbone {meta.get('backbone')} has no text tower")
        raise FeatxUsageError(f"the zero-shot head needs a clip: cache at the model's own pooling; {why}")
    from ..backbones.clip_models import text_classifier
    from ..backbones.registry import recorded_weights

    try:
        W, scale, sha = text_classifier(str(meta["backbone"]), recorded_weights(meta), list(class_names), templates,
                                        device=device)
    except (KeyError, ValueError) as exc:  # a tokenizer or config that does not fit
        raise FeatxError(f"cannot build the zero-shot head: {exc}") from None
    if (meta.get("weights_sha256") or None) != sha:
        raise FeatxError(f"the {meta.get('backbone')} weights here (sha256 {str(sha)[:12]}) are not the ones the "
                         f"embeddings were made with ({str(meta.get('weights_sha256'))[:12]}): re-extract, or put "
                         "the recorded weights back")
    if W.shape[1] != int(meta.get("feature_dim") or W.shape[1]):
        raise FeatxError(f"the text tower gives {W.shape[1]}-d embeddings, the cache holds {meta.get('feature_dim')}-d")
    return {"text_weights": W, "logit_scale": scale}
