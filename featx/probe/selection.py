"""Choosing among candidates that the data cannot tell apart: the one-standard-error rule.

A validation score measured on ``n`` rows has a standard error of about ``sqrt(s (1 - s) / n)`` (a proportion's; used
for every metric, as an approximation for the macro ones). Every candidate whose score is within one standard error
of the best is *tied* with it; among the tied, featx chooses by a stated order of simplicity (Breiman et al. 1984;
Hastie, Tibshirani & Friedman, "The Elements of Statistical Learning", 7.10), and says which were tied. The order is
a convention, not tuned on data.
"""

from __future__ import annotations

import math
from numbers import Number

__all__ = ["HEAD_SIMPLICITY", "score_se", "one_se_choice", "edge_notes"]

#: Heads from simplest (a linear map, fast to fit and export) to most complex (a kernel map; k-NN keeps every row).
HEAD_SIMPLICITY = ("logreg", "svm", "torch-linear", "knn", "rbf-svm")


def score_se(score: float, n: int) -> float:
    """The standard error of a proportion ``score`` measured on ``n`` rows."""
    return math.sqrt(max(score * (1 - score), 0.0) / max(n, 1))


def one_se_choice(scores: dict, n: int, order=HEAD_SIMPLICITY) -> dict:
    """``scores`` (candidate -> validation score on ``n`` rows): the highest, the standard error, the tied
    candidates (within one standard error of the highest, in ``order``) and the chosen one (the first tied in
    ``order``; candidates not in it come after, by score)."""
    highest = max(scores, key=scores.get)
    se = score_se(scores[highest], n)
    rank = {name: i for i, name in enumerate(order)}
    tied = sorted((c for c, s in scores.items() if s >= scores[highest] - se - 1e-12),
                  key=lambda c: (rank.get(c, len(rank)), -scores[c]))
    return {"highest": highest, "highest_score": scores[highest], "se": round(se, 4), "n": n, "tied": tied,
            "chosen": tied[0],
            "rule": f"one-standard-error rule: the candidates within one standard error ({se:.4f}, from {n} rows) of "
                    f"the best score are tied; the first of them in the order {', '.join(order)} is chosen"}


def edge_notes(head: str, grid: dict, best_params: dict, *, fit: bool = False) -> list[str]:
    """A note for each numeric parameter whose best value is the smallest or largest of 3+ grid values: the optimum
    may lie beyond the grid (the way forward: grid's ``--grid``, or with ``fit`` fit's ``--param``)."""
    notes = []
    for name, values in grid.items():
        numeric = sorted(v for v in values if isinstance(v, Number) and not isinstance(v, bool))
        if len(numeric) < 3 or best_params.get(name) not in (numeric[0], numeric[-1]):
            continue
        side = "smallest" if best_params[name] == numeric[0] else "largest"
        how = f"try --param {name}=... beyond it" if fit else f"extend the grid (--grid {head}.{name}=...)"
        notes.append(f"{head}: the best {name}={best_params[name]:g} is the grid's {side} value; the optimum may lie "
                     f"beyond it: {how}")
    return notes
