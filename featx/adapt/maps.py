"""Domain adaptation on cached features: map source and target features so that a head trained on the labelled
source works on the (unlabelled) target.

Methods (:data:`METHODS`), each a map fitted on source and target features together and applied to new target
features at prediction time:

- ``none``: no adaptation (source-only; the reference every method is compared with);
- ``standardize``: per-domain standardisation -- each domain re-centred and re-scaled by its own mean and
  standard deviation (:class:`DomainStandardizer`, featx's own: a few lines);
- ``coral``: CORAL, correlation alignment (Sun, Feng & Saenko, AAAI 2016): source features whitened and
  re-coloured with the target's covariance (:class:`CoralMap`, featx's own, a dozen lines of numpy: skada's
  ``CORALAdapter`` neither centres the domains nor takes a fixed regulariser, and on the benchmark pairs it gained
  -1.8 and +12.2 points where this one gains +4.2 and +13.2, see docs/adaptation.md);
- ``subspace``: subspace alignment (Fernando, Habrard, Sebban & Tuytelaars, ICCV 2013): both domains projected
  onto their own PCA subspaces, the source's aligned to the target's -- skada's ``SubspaceAlignmentAdapter``.

skada (https://scikit-adaptation.github.io, the ``adapt`` extra) is the maintained scikit-learn-compatible
library for subspace alignment; featx wraps its adapters (:class:`SkadaMap`) so that every head of the registry works with
every method, and the adapted head (:class:`AdaptedHead`) saves and loads like any head.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if

from ..compat import SKADA_ADAPTERS
from ..errors import FeatxError, FeatxUsageError

__all__ = ["METHODS", "CORAL_REG", "check_methods", "CoralMap", "DomainStandardizer", "SkadaMap", "AdaptedHead",
           "make_map"]

#: method -> what it is
METHODS = {
    "none": "no adaptation (source-only)",
    "standardize": "per-domain standardisation (each domain by its own mean and std)",
    "coral": "CORAL: source covariance aligned to the target's, domains centred (Sun et al. 2016)",
    "subspace": "subspace alignment of the domains' PCA bases (Fernando et al. 2013; skada)",
}
#: method -> skada's adapter (its public name; featx.compat derives the names skops records from these; heads of
#: an earlier featx may hold skada's CORALAdapter, still loaded)
_SKADA = {"subspace": SKADA_ADAPTERS[1]}
#: CORAL's regulariser: reg x (the domain's mean feature variance) added to each covariance's diagonal -- the
#: paper's identity regulariser of 1 for standardised features, for features of any scale. Chosen on the benchmark
#: pairs fashion -> fashion-degraded and mnist -> mnist-m (0.1, 1 and 10 tried; 1 was best or within 0.5 point on
#: both); reported on the held-out digits <-> mnist pairs (bench/bench_adapt.py), never tuned on them.
CORAL_REG = 1.0


def check_methods(names: list[str]) -> list[str]:
    """``names`` (``all`` = every method) checked before any work: a usage error names the unknown one."""
    unknown = [m for m in names if m not in METHODS and m != "all"]
    if unknown:
        raise FeatxUsageError(f"unknown adaptation method {unknown[0]!r}; choose from {', '.join(METHODS)} or all",
                              param="method")
    return names


class DomainStandardizer(BaseEstimator):
    """Each domain standardised by its own statistics; new target features by the target's."""

    def fit_map(self, Xs: np.ndarray, Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.mean_source_, self.scale_source_ = Xs.mean(axis=0), Xs.std(axis=0) + 1e-8
        self.mean_target_, self.scale_target_ = Xt.mean(axis=0), Xt.std(axis=0) + 1e-8
        return (Xs - self.mean_source_) / self.scale_source_, self.map_target(Xt)

    def map_target(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_target_) / self.scale_target_


def _matrix_power(C: np.ndarray, power: float) -> np.ndarray:
    w, V = np.linalg.eigh(C)
    return (V * np.clip(w, 1e-12, None) ** power) @ V.T


class CoralMap(BaseEstimator):
    """CORAL with centred domains: ``(Xs - mean_s) Cs^-1/2 Ct^1/2 + mean_t``, each covariance regularised by
    ``reg`` times its mean variance on the diagonal; target features unchanged."""

    def __init__(self, reg: float = CORAL_REG):
        self.reg = reg

    def fit_map(self, Xs: np.ndarray, Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Xs, Xt = np.asarray(Xs, dtype=np.float64), np.asarray(Xt, dtype=np.float64)
        self.mean_source_, self.mean_target_ = Xs.mean(axis=0), Xt.mean(axis=0)
        eye = np.eye(Xs.shape[1])
        cs, ct = np.cov(Xs, rowvar=False), np.cov(Xt, rowvar=False)
        cs = cs + self.reg * np.trace(cs) / len(cs) * eye
        ct = ct + self.reg * np.trace(ct) / len(ct) * eye
        self.transform_ = _matrix_power(cs, -0.5) @ _matrix_power(ct, 0.5)
        return ((Xs - self.mean_source_) @ self.transform_ + self.mean_target_).astype(np.float32), Xt

    def map_target(self, X: np.ndarray) -> np.ndarray:
        return X


class IdentityMap(BaseEstimator):
    """No adaptation."""

    def fit_map(self, Xs, Xt):
        return Xs, Xt

    def map_target(self, X):
        return X


class SkadaMap(BaseEstimator):
    """A skada adapter (fitted on source + target with ``sample_domain``) as a featx domain map."""

    def __init__(self, adapter=None):
        self.adapter = adapter

    def fit_map(self, Xs: np.ndarray, Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.vstack([Xs, Xt]).astype(np.float64)
        domain = np.concatenate([np.ones(len(Xs), np.int64), -np.ones(len(Xt), np.int64)])
        y = np.full(len(X), -1, dtype=np.int64)  # skada's convention for unlabelled (target) rows
        out = np.asarray(self.adapter.fit_transform(X, y, sample_domain=domain))
        return out[: len(Xs)], out[len(Xs):]

    def map_target(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return np.asarray(self.adapter.transform(X, sample_domain=-np.ones(len(X), np.int64)))


def make_map(method: str, *, n_components: int | None = None):
    """A fresh domain map for ``method``; a one-line error when skada is needed and missing."""
    if method not in METHODS:
        raise FeatxError(f"unknown adaptation method {method!r}; choose from {', '.join(METHODS)} or all")
    if method == "none":
        return IdentityMap()
    if method == "standardize":
        return DomainStandardizer()
    if method == "coral":
        return CoralMap()
    if importlib.util.find_spec("skada") is None:
        raise FeatxError(f"{method} needs skada, which is not installed: pip install 'featx[adapt]'", param="method")
    import skada

    cls = getattr(skada, _SKADA[method])
    return SkadaMap(cls(n_components=n_components, random_state=0))


def _head_has(name: str):
    return lambda self: hasattr(self.head, name)


class AdaptedHead(ClassifierMixin, BaseEstimator):
    """A head trained on adapted source features; it predicts on target-domain features (``featx predict`` on
    target images), mapping them first."""

    def __init__(self, domain_map=None, head=None):
        self.domain_map = domain_map
        self.head = head

    @property
    def classes_(self):
        return self.head.classes_

    def predict(self, X):
        return self.head.predict(self.domain_map.map_target(X))

    @available_if(_head_has("predict_proba"))
    def predict_proba(self, X):
        return self.head.predict_proba(self.domain_map.map_target(X))

    @available_if(_head_has("decision_function"))
    def decision_function(self, X):
        return self.head.decision_function(self.domain_map.map_target(X))
