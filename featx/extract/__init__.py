"""The extraction stage, the only one that runs a backbone over a dataset: :mod:`.plan` (what a run will do: items,
the features' spec, key, file, donors), :mod:`.batches` (items, decoding, batching, the forward pass) and
:mod:`.run` (:func:`extract`: plan, reuse, embed + write, finalise)."""

from .batches import embed
from .plan import ExtractPlan, ExtractResult, cache_key, check_device, plan_extraction, spec_for
from .run import ProgressFn, extract, tune_malloc

__all__ = ["ExtractPlan", "ExtractResult", "ProgressFn", "cache_key", "check_device", "embed", "extract",
           "plan_extraction", "spec_for", "tune_malloc"]
