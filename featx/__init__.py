"""featx: frozen-CNN embeddings cached once in HDF5, interchangeable heads fitted on them."""

__version__ = "0.1.0"

from .errors import FeatxError  # noqa: E402
from .store import FeatureSet, open_features  # noqa: E402

__all__ = ["__version__", "FeatxError", "FeatureSet", "open_features"]
