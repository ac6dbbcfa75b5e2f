"""The ``featx`` command group. Each command lives in the module of its family and only parses
its options, calls the library and renders the result:

- :mod:`.extract_cmds`: ``extract``, ``merge``
- :mod:`.head_cmds`: ``fit``, ``grid``, ``report``, ``rank``
- :mod:`.reuse_cmds`: ``predict``, ``neighbors``, ``export``, ``export-model``
- :mod:`.info_cmds`: ``info``, ``backbones``, ``heads``
- :mod:`.adapt_cmds`: ``adapt``; :mod:`.audit_cmds`: ``audit``, ``map``

Exit status and error format: see :mod:`featx.cli.base`.
"""

from __future__ import annotations

import click

from .adapt_cmds import adapt
from .audit_cmds import audit, map_
from .base import FeatxGroup, configure_output
from .extract_cmds import extract, merge
from .finetune_cmds import finetune
from .head_cmds import fit, grid, rank, report
from .info_cmds import backbones, heads, info
from .reuse_cmds import export, export_model, index, neighbors, predict

__all__ = ["main"]


@click.group(cls=FeatxGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr (no progress notes).")
@click.version_option(package_name="featx", message="featx %(version)s")
def main(debug: bool, quiet: bool) -> None:
    """featx: extract frozen-CNN embeddings once into an HDF5 cache, then fit heads on them in seconds.

    Typical use: `featx extract --pipeline pipelines/default.toml`, then
    `featx fit --pipeline pipelines/default.toml --head svm`.

    Exit status: 0 done; 2 usage error (bad option, name or missing input file; nothing was done);
    1 the run failed.
    """
    configure_output(verbose=not quiet)


for _command in (extract, merge, fit, grid, report, rank, adapt, audit, map_, finetune, info, backbones, heads, predict,
                 index, neighbors, export, export_model):
    main.add_command(_command)
