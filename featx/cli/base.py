"""What every command shares: the group with featx's exit-status rule, logging and progress rendering,
options generated from :mod:`featx.options`, and the checks that run before any heavy import.

Exit status (the README states the same rule):

- **0** -- the command did its job.
- **2** -- a usage error: a bad option or argument (click's own errors and
  :class:`~featx.errors.FeatxUsageError`: unknown head/parameter/backbone/weights/layer/device, a
  named input file that does not exist, a pipeline file that does not validate). Nothing was done
  and nothing was written.
- **1** -- the run failed (:class:`~featx.errors.FeatxError`: damaged or unfinished cache, full disk,
  weights missing offline, interrupted; or an unforeseen error).

Every error is one line on stderr, ``featx: error: ...``; ``featx --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

import click

from ..errors import FeatxError, FeatxUsageError
from ..options import settings_of
from ..util import FILE_KINDS, existing_file, file_kind, first_line, printable

__all__ = ["FeatxGroup", "setting_option", "existing_file", "configure_output", "progress_renderer",
           "pipeline_option", "trust_option", "out_option", "top_k_option", "force_option", "echo",
           "check_output"]

log = logging.getLogger("featx")


def echo(message="", *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` of ``message`` with its control characters escaped (:func:`featx.util.printable`): every line
    featx prints goes through here, so a class name, id or file name can never drive the terminal."""
    click.echo(printable(message), err=err, nl=nl)


class _Failure(click.ClickException):
    """A featx error on its way out: one line on stderr, the error's own exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _flag_of(ctx: click.Context, param: str | None) -> str | None:
    """The command-line flag of library parameter ``param`` in the command that ran (``reuse`` -> ``--reuse``)."""
    if not param:
        return None
    sub = ctx.invoked_subcommand and ctx.command.get_command(ctx, ctx.invoked_subcommand)
    spelled = f"--{param.replace('_', '-')}"
    for p in getattr(sub, "params", ()):
        if isinstance(p, click.Option) and (p.name == param or spelled in p.opts):
            return spelled if spelled in p.opts else max(p.opts, key=len)
    return None


class FeatxGroup(click.Group):
    """click's group with featx's exit-status rule and one-line errors (see the module docstring)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, BrokenPipeError):
            raise
        except FeatxError as exc:
            if ctx.params.get("debug"):
                raise
            raise _Failure(exc.for_flag(_flag_of(ctx, exc.param)), exc.exit_code) from None
        except Exception as exc:  # a bug or an environment problem we did not foresee
            if ctx.params.get("debug"):
                raise
            raise _Failure(f"{type(exc).__name__}: {first_line(exc)} (run `featx --debug ...` for the traceback)") from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except click.UsageError as exc:  # click's own: missing/invalid option or argument, unknown command
            path = exc.ctx.command_path if exc.ctx is not None else "featx"
            echo(f"featx: error: {exc.format_message()} (see `{path} --help`)", err=True)
            code = 2
        except click.ClickException as exc:
            echo(f"featx: error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except (click.Abort, KeyboardInterrupt):
            echo("featx: error: interrupted", err=True)
            code = 1
        except BrokenPipeError:  # `featx info x.h5 | head`: the reader left; say nothing more (Python's advice)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def setting_option(cls, name: str, *short: str):
    """A click option for setting ``name`` of options dataclass ``cls``: its flag, help text and choices
    come from the declaration; its default is ``None`` (= the pipeline file's value, else the declared default)."""
    f = settings_of(cls)[name]
    m = f.metadata
    flag = m["cli"] or f"--{name.replace('_', '-')}"
    kind = m["kind"]
    kwargs: dict = {"default": None, "help": m["help"]}
    if m["choices"] is not None:
        kwargs["type"] = _RegistryChoice(m["choices"])
    elif kind is bool and "/" not in flag:
        kwargs["is_flag"] = True
    elif kind is int:
        kwargs["type"] = int
    elif kind is float:
        kwargs["type"] = float
    return click.option(flag, *short, name, **kwargs)


def source_options(*names: str):
    """The :class:`~featx.options.SourceOptions` settings ``names`` as click options, in that order (the data a
    command reads: ``data``, ``root``, ``val_fraction`` ...)."""
    from ..options import SourceOptions

    def decorate(command):
        for name in reversed(names):
            command = setting_option(SourceOptions, name)(command)
        return command

    return decorate


class _RegistryChoice(click.Choice):
    """``click.Choice`` over a registry read when used, so an entry registered later is listed too."""

    def __init__(self, registry):
        self._registry = registry
        super().__init__(list(registry()))

    @property
    def choices(self):
        return tuple(self._registry())

    @choices.setter
    def choices(self, value):  # click's __init__ assigns it; the registry stays the source
        pass


class _Lines(logging.Handler):
    """featx's messages on stderr, one line each."""

    def emit(self, record):
        echo(record.getMessage(), err=True)


def configure_output(*, verbose: bool = True) -> None:
    """Route the ``featx`` logger to stderr and third-party warnings to one-line notes.

    Warnings that featx already handles in its own words are silenced where they arise (scikit-learn's
    Nystroem "n_components > n_samples": featx reports the landmark count it used) or here (loky's
    leaked-semaphore notices at exit); any other third-party warning becomes one ``featx: note`` line.
    """
    if not any(isinstance(h, _Lines) for h in log.handlers):
        log.addHandler(_Lines())
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*leaked semaphore", category=UserWarning)
    os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")  # loky's tracker process
    warnings.showwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    module = Path(filename).parent.name if filename else ""
    echo(f"featx: note ({module or category.__name__}): {first_line(Warning(str(message)))}", err=True)


def progress_renderer(*, enabled: bool = True, every_s: float = 30.0):
    """A ``progress(done, total, label)`` callback for the library.

    On a terminal: click's progress bar. Otherwise (a log file, nohup, CI, a batch scheduler): one
    steady line at the start, every ``every_s`` seconds and at the end, with the rate and the time left.
    A new ``label`` starts a new bar (or count): one renderer follows a command's stages in turn.
    """
    if not enabled or not log.isEnabledFor(logging.INFO):  # --no-progress, or featx -q
        return None
    if sys.stderr.isatty():
        return _Bar()
    return _SteadyLines(every_s)


class _Bar:
    def __init__(self):
        self.bar = None
        self.shown = 0
        self.label = None

    def __call__(self, done: int, total: int, label: str) -> None:
        if label != self.label:
            if self.bar is not None and self.shown < self.bar.length:
                self.bar.__exit__(None, None, None)
            self.bar, self.shown, self.label = None, 0, label
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=printable(label), show_pos=True, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.shown)
        self.shown = done
        if done >= total:
            self.bar.__exit__(None, None, None)


class _SteadyLines:
    def __init__(self, every_s: float):
        self.every_s = every_s
        self.t0 = self.last = None
        self.first_done = 0
        self.label = None

    def __call__(self, done: int, total: int, label: str) -> None:
        now = time.monotonic()
        if label != self.label:
            self.t0, self.label = None, label
        if self.t0 is None:
            self.t0, self.last, self.first_done = now, now, done
            echo(f"{label}: {done}/{total} items", err=True)
            return
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        rate = (done - self.first_done) / max(now - self.t0, 1e-9)
        left = f", about {(total - done) / rate / 60:.1f} min left" if rate > 0 and done < total else ""
        echo(f"{label}: {done}/{total} items ({100 * done / max(total, 1):.0f}%), {rate:.1f} items/s{left}", err=True)


pipeline_option = click.option(
    "--pipeline", "-p", type=click.Path(dir_okay=False), default=None,
    help="Pipeline file (pipelines/*.toml) giving source, backbone and settings; other options override it.",
)

trust_option = click.option(
    "--trust", is_flag=True,
    help="Also load a head that featx would refuse: a pickle (heads from an earlier featx; unpickling runs "
         "code), a head holding types featx does not trust, or one changed after `featx fit`. Only for files you "
         "made yourself.")


def out_option(help: str, *, file: bool | None = True, aliases: tuple[str, ...] = ()):
    """``-o/--out``: the same name and short flag in every command (``aliases``: older names kept working).
    ``file``: a file (True), a folder (False) or either (None)."""
    kind = click.Path() if file is None else click.Path(dir_okay=not file, file_okay=file)
    return click.option("--out", *aliases, "-o", "out", type=kind, help=help)


force_option = click.option(
    "--force", is_flag=True,
    help="Replace an existing output even when it is another kind of file (never one of the command's inputs).")


def companions(path) -> dict[Path, str]:
    """The files that belong to an input file, each named by the module that writes it: itself, its card copy (a
    head's), its unfinished ``.partial`` version and that one's lock (a cache's), its stored baseline features (a
    cache's). Imported here, when an output is checked, so that naming a command stays fast."""
    from ..cache.store import partial_path
    from ..cache.writer import lock_path
    from ..heads.persist import card_path
    from ..transfer.baselines import store_path

    p = Path(path)
    return {p: "", card_path(p): "its card", partial_path(p): "its unfinished version", lock_path(p): "its lock",
            store_path(p): "its baseline features"}


def check_output(target, inputs: dict, *, replaces: tuple[str, ...] = (), force: bool | None = False) -> Path:
    """``target`` as an output path, or a usage error before any work when writing there would destroy an input.

    Args:
        target: where the command will write.
        inputs: what the command reads, ``{"the cache": path, "the images": [paths], ...}`` (``None`` skipped); an
            output is never an input nor one of its :func:`companions`.
        replaces: the :func:`featx.util.file_kind` s an existing ``target`` may have (``"text"``, ``"zip"`` ...):
            the same kind of artifact, replaced atomically. Another kind (an image, a cache, a folder) is refused unless
            ``force`` (``None``: the command has no ``--force``).
    """
    t = Path(target)
    for what, paths in inputs.items():
        for p in paths if isinstance(paths, (list, tuple)) else [paths]:
            if p is None:
                continue
            for c, role in companions(p).items():
                if _same_file(t, c):
                    detail = f" ({role})" if role else ""
                    raise FeatxUsageError(f"{target} is {what} {p}{detail}: writing there would destroy it; "
                                          "choose another output", param="out")
    if t.exists() and not force:
        kind = file_kind(t)
        if kind not in replaces:
            raise FeatxUsageError(f"{target} exists and is {FILE_KINDS[kind]}, not what this command writes: choose "
                                  f"another output{' (or force the replacement)' if force is not None else ''}",
                                  param="out")
    return t


#: the files of every report folder (beside its JSON record): featx.report.document.write_report
REPORT_FILES = ("report.md", "report.html")


def check_report_folder(out_dir, names, inputs: dict, *, replaces: tuple[str, ...] = ("text", "zip")) -> Path:
    """``out_dir`` as a report folder whose files ``names`` replace only earlier reports (text, or saved heads;
    ``replaces``: the kinds its files have): each is checked as an output (:func:`check_output`), before any work."""
    out_dir = Path(out_dir)
    for name in names:
        check_output(out_dir / name, inputs, replaces=replaces, force=None)
    return out_dir


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def top_k_option(default: int, help: str):
    """``-k/--top-k``: the same name and short flag in every command."""
    return click.option("--top-k", "-k", "top_k", type=click.IntRange(min=1), default=default, show_default=True,
                        help=help)
