"""The one plot helper: matplotlib on its file backend (Agg), figures as base64 PNG for self-contained reports."""

from __future__ import annotations

import base64
import io

__all__ = ["pyplot", "png", "thumbnail"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """A matplotlib figure as base64 PNG (90 dpi, tight); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(img, size: int = 72) -> str:
    """A PIL image shrunk to fit ``size`` x ``size``, as base64 PNG."""
    img = img.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
