"""A linear head and its backbone folded into one deployable module: torch.export (``.pt2``, the default),
ONNX (``.onnx``, run with onnxruntime) or TorchScript (``.pt``; torch deprecates ``torch.jit``, kept for
runtimes that only read it). Each takes a preprocessed batch ``(N, 3, H, W)`` of any N."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import FeatxError, FeatxUsageError
from ..util import atomic_write

__all__ = ["export_network", "MODEL_FORMATS", "l2_normalised", "linear_weights", "export_model"]

#: format -> (file suffix, what it is, how to load it)
MODEL_FORMATS = {
    "export": (".pt2", "torch.export program", "torch.export.load(path).module()"),
    "onnx": (".onnx", "ONNX model (the onnx extra)", "onnxruntime.InferenceSession(path)"),
    "torchscript": (".pt", "TorchScript module (deprecated by torch)", "torch.jit.load(path)"),
}


def l2_normalised(head) -> bool:
    """Whether a head L2-normalises its input first (the zero-shot head): ``x / |x|`` before :func:`linear_weights`."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    first = next(iter(head.named_steps.values())) if isinstance(head, Pipeline) else head
    return isinstance(first, Normalizer) and first.norm == "l2"


def linear_weights(head) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with ``scores = x @ W.T + b`` for a linear head (scaling steps folded in; for a head that
    L2-normalises first, :func:`l2_normalised`, ``x`` is the normalised input).

    Raises:
        FeatxError: the head is not linear (k-NN, a kernel map).
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .layers import LayerColumns

    steps = list(head.named_steps.values()) if isinstance(head, Pipeline) else [head]
    columns = None
    if l2_normalised(head):  # applied by the exported module itself (export_model)
        steps = steps[1:]
    if isinstance(steps[0], LayerColumns):  # chosen layers: their weights scattered back into the whole vector
        columns, steps = list(steps[0].columns), steps[1:]
    *pre, clf = steps
    if hasattr(clf, "estimators_") and hasattr(clf, "label_binarizer_"):  # one-vs-rest (multi-label): a row per label
        clf = _one_vs_rest_rows(clf, head.n_features_in_ if columns is None else len(columns))
    if not hasattr(clf, "coef_") or any(not isinstance(s, StandardScaler) for s in pre):
        kinds = ", ".join(type(s).__name__ for s in steps)
        raise FeatxError(f"only linear heads (logreg, svm, torch-linear, zeroshot) can be exported as one model; this one is "
                         f"{kinds}")
    W = np.asarray(clf.coef_, dtype=np.float64)
    b = np.asarray(clf.intercept_, dtype=np.float64)
    if W.shape[0] == 1 and len(clf.classes_) == 2:  # sklearn's binary layout: one row for the second class
        W, b = np.concatenate([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    for scaler in reversed(pre):  # x -> (x - mean) / scale, folded into W and b
        mean = scaler.mean_ if scaler.with_mean else 0.0
        scale = scaler.scale_ if scaler.with_std else 1.0
        W = W / scale
        b = b - W @ (mean if np.ndim(mean) else np.full(W.shape[1], mean))
    if columns is not None:
        full = np.zeros((W.shape[0], head.named_steps["layers"].n_features_in_))
        full[:, columns] = W
        W = full
    return W.astype(np.float32), b.astype(np.float32)


def _one_vs_rest_rows(ovr, dim: int):
    """A one-vs-rest head's per-label decision values as one linear layer (``coef_`` / ``intercept_``, a row per
    label): each binary solver's second-class-minus-first row; a label constant in training keeps its constant."""
    from types import SimpleNamespace

    W, b = [], []
    for est in ovr.estimators_:
        if hasattr(est, "coef_"):
            c, i = np.asarray(est.coef_, np.float64), np.asarray(est.intercept_, np.float64)
            W.append(c[1] - c[0] if c.shape[0] == 2 else c[0])
            b.append(i[1] - i[0] if c.shape[0] == 2 else i[0])
        else:  # scikit-learn's constant predictor for a label all 0 or all 1 in training
            W.append(np.zeros(dim))
            b.append(float(np.ravel(est.decision_function(np.zeros((1, dim))))[0]))
    return SimpleNamespace(coef_=np.stack(W), intercept_=np.asarray(b), classes_=np.arange(len(W)))


def export_model(head, bb, out: Path, fmt: str) -> Path:
    """One module: preprocessed image batch ``(N, 3, H, W)`` -> backbone -> the head's class scores."""
    import torch

    W, b = linear_weights(head)
    if W.shape[1] != bb.feature_dim:
        raise FeatxError(f"the head takes {W.shape[1]}-d features, the backbone gives {bb.feature_dim}-d")
    fc = torch.nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(W))
        fc.bias.copy_(torch.from_numpy(b))
    layers = [bb.model, *([_L2Normalize()] if l2_normalised(head) else []), fc]
    return export_network(torch.nn.Sequential(*layers), bb, out, fmt)


def _L2Normalize():
    """``x / max(|x|, 1e-12)`` per row, as scikit-learn's ``Normalizer`` does (zero rows stay zero)."""
    import torch

    class L2Normalize(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.normalize(x, dim=1, eps=1e-12)

    return L2Normalize()


def export_network(model, bb, out: Path, fmt: str) -> Path:
    """A whole network (preprocessed image batch -> class scores) written in ``fmt`` (a head on its backbone, or a
    fine-tuned network from :func:`featx.finetune.run.load_finetuned`)."""
    import torch

    model = model.eval().cpu()
    size = bb.preprocess.get("input_size", (3, 224, 224))
    example = torch.zeros(1, *size)
    out = Path(out)
    if fmt not in MODEL_FORMATS:
        raise FeatxUsageError(f"unknown model format {fmt!r} ({', '.join(MODEL_FORMATS)})")
    missing = [m for m in ("onnx", "onnxscript") if fmt == "onnx" and importlib.util.find_spec(m) is None]
    if missing:
        raise FeatxError(f"onnx needs {' and '.join(missing)}, not installed here: pip install 'featx[onnx]'",
                         param="format")
    with atomic_write(out, suffix=f".tmp{MODEL_FORMATS[fmt][0]}") as tmp:  # torch.export wants a .pt2 name
        _write_model(model, example, tmp, fmt)
    return out


def _write_model(model, example, tmp: Path, fmt: str) -> None:
    import torch

    import warnings

    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the format
            traced = torch.jit.trace(model, example)        # every C++/mobile runtime loads
        traced.save(str(tmp))
        return
    batch = torch.export.Dim("batch", min=1)
    example = example.expand(2, *example.shape[1:])  # a batch of 1 would be specialised to 1
    if fmt == "export":
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(tmp))
    else:
        _write_onnx(model, example, batch, tmp)


#: Below this size an ONNX model is written as one self-contained file (protobuf's limit is 2 GiB).
ONNX_INLINE_MAX = 1 << 30


def _write_onnx(model, example, batch, tmp: Path) -> None:
    """ONNX through torch's dynamo exporter, re-saved as one self-contained file (the exporter may put the weights
    in a side file named after the temporary one, which a user copying the .onnx alone would lose)."""
    import tempfile
    import warnings

    import onnx
    import torch

    with tempfile.TemporaryDirectory(dir=tmp.parent) as work:
        first = Path(work) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
            torch.onnx.export(model, (example,), str(first), input_names=["image"], output_names=["scores"],
                              dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
        proto = onnx.load(str(first))  # reads any external data into the model
    if proto.ByteSize() > ONNX_INLINE_MAX:
        raise FeatxError(f"the ONNX model is {proto.ByteSize() >> 20} MiB, too large for one self-contained file; "
                         "export it in torch.export's format instead", param="format")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
