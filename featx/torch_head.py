"""A linear classifier trained with torch, as a scikit-learn estimator.

It is the "new fc layer" of the classic fine-tuning loop, trained on cached embeddings
instead of re-running the backbone every epoch: softmax cross-entropy, AdamW, mini-batches,
cosine learning-rate decay. The learned weights are kept as numpy arrays (``coef_``,
``intercept_``), so the fitted estimator pickles, clones and predicts without torch state.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["TorchLinearClassifier"]


class TorchLinearClassifier(ClassifierMixin, BaseEstimator):
    """Multinomial linear classifier trained with AdamW on CPU or CUDA.

    Args:
        lr: AdamW learning rate (peak, decayed to 0 by a cosine schedule).
        weight_decay: AdamW decoupled weight decay.
        epochs: passes over the training set.
        batch_size: rows per optimisation step.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        random_state: seed for initialisation and shuffling.

    Attributes:
        classes_: class labels seen in ``fit``.
        coef_: ``(n_classes, n_features)`` weights.
        intercept_: ``(n_classes,)`` biases.
        n_features_in_: number of input features.
        loss_curve_: mean training loss per epoch.
    """

    _parameter_constraints = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"cpu", "auto"}), str],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(self, *, lr=1e-3, weight_decay=1e-4, epochs=30, batch_size=256, device="cpu",
                 random_state=0):
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        dev = self._device()
        gen = torch.Generator().manual_seed(int(self.random_state or 0))
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(dev)
        yt = torch.from_numpy(y_idx.astype(np.int64)).to(dev)
        n, d = Xt.shape
        layer = torch.nn.Linear(d, n_classes).to(dev)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(n_classes, d, generator=gen) * 0.01)
            layer.bias.zero_()
        opt = torch.optim.AdamW(layer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps_per_epoch = max(1, -(-n // self.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs * steps_per_epoch))
        self.loss_curve_ = []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                loss = torch.nn.functional.cross_entropy(layer(Xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            self.loss_curve_.append(total / n)
        self.coef_ = layer.weight.detach().cpu().numpy().astype(np.float64)
        self.intercept_ = layer.bias.detach().cpu().numpy().astype(np.float64)
        self.n_iter_ = self.epochs
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X):
        """Class scores; for two classes the score of the second class minus the first's."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X):
        z = self._logits(X)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X):
        z = self._logits(X)
        return self.classes_[np.argmax(z, axis=1)]
