"""The few places featx reads a dependency's non-public names, each in one function with a test
(``tests/test_layout.py::test_non_public_names_featx_reads_still_exist``) that fails when upstream moves it.

Everything else in featx uses public APIs only (``tests/test_layout.py`` also refuses any import of a private module).

- :func:`dataset_labels`: torchvision datasets keep their labels under different names, some private
  (``Flowers102._labels``, ``StanfordCars._samples``); reading them lists a dataset without decoding its images.
- :func:`imagenet_top1`: torchvision's weights keep their accuracy under ``meta["_metrics"]``.
- :func:`sklearn_check_params`: scikit-learn checks an estimator's parameters at ``fit`` through the private
  ``_validate_params``; featx calls it to refuse bad head parameters before any data is read.
- :func:`skada_trusted_types`: skops records each object's class by its module, and skada's adapters live in private
  modules (``skada._mapping``); the names are derived from skada's public classes, never written here.

Nothing here imports a dependency at module level.
"""

from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["dataset_labels", "imagenet_top1", "sklearn_check_params", "skada_trusted_types", "SKADA_ADAPTERS"]

#: skada's adapters a featx head may hold (``featx adapt --method coral / subspace``), by their public names.
SKADA_ADAPTERS = ("CORALAdapter", "SubspaceAlignmentAdapter")


def dataset_labels(ds) -> np.ndarray | None:
    """A torchvision dataset's labels without decoding its images; ``None`` when it keeps them nowhere featx knows."""
    for attr in ("targets", "labels", "_labels", "y"):
        if getattr(ds, attr, None) is not None:
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    if getattr(ds, "_samples", None) is not None:
        return np.asarray([s[1] for s in ds._samples], dtype=np.int64)
    return None


def imagenet_top1(weights) -> float | None:
    """ImageNet-1K top-1 as a torchvision weights enum's metadata reports it."""
    return weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")


def sklearn_check_params(est) -> None:
    """Run a scikit-learn estimator's own parameter constraints without data (raises what ``fit`` would).

    scikit-learn has no public call for this: its estimators check ``_parameter_constraints`` at the start of
    ``fit`` through the private ``_validate_params``. Without it featx would find bad parameters only at ``fit``,
    after loading the cache."""
    check = getattr(est, "_validate_params", None)
    if check is not None and hasattr(est, "_parameter_constraints"):
        check()


def skada_trusted_types() -> tuple[str, ...]:
    """The type names skops records for skada's adapters (``module.Class``), read off skada's public classes; empty
    when skada is not installed (then no head holding them can be built or loaded anyway)."""
    if importlib.util.find_spec("skada") is None:
        return ()
    import skada

    return tuple(f"{cls.__module__}.{cls.__qualname__}" for cls in (getattr(skada, n) for n in SKADA_ADAPTERS))
