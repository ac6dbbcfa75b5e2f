"""The ``featx`` command line (a thin layer over the library; see :mod:`featx.cli.app`)."""

from .app import main

__all__ = ["main"]
