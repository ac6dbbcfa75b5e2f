"""featx: frozen-CNN embeddings cached once in HDF5, interchangeable heads fitted on them.

The public API for other projects: :func:`open_features` (read a cache), :func:`load_head`
(a head saved by ``featx fit``) and :class:`FeatxError`. Importing featx prints nothing; its
messages go to the ``featx`` logger, and long steps report progress through a ``progress(done, total, label)``
callback (:data:`featx.extract.ProgressFn`), which the command line renders as a bar or as log lines.
"""

import logging

from .errors import FeatxError, FeatxUsageError
from .version import __version__

logging.getLogger("featx").addHandler(logging.NullHandler())

__all__ = ["__version__", "FeatxError", "FeatxUsageError", "FeatureSet", "open_features", "load_head"]


def __getattr__(name):  # the readers load h5py / scikit-learn only when asked for
    if name in ("FeatureSet", "open_features"):
        from .cache import store

        return getattr(store, name)
    if name == "load_head":
        from .heads.persist import load_head

        return load_head
    raise AttributeError(f"module 'featx' has no attribute {name!r}")
