"""Where heads pickled before featx 0.2 find their classes: ``featx.torch_head.LBFGSLinearClassifier``.

The solvers now live in :mod:`featx.heads.solvers`; a joblib file stores the module path of each
class, so this name stays for the heads users already saved.
"""

from .heads.solvers import LBFGSLinearClassifier, TorchLinearClassifier

__all__ = ["LBFGSLinearClassifier", "TorchLinearClassifier"]
