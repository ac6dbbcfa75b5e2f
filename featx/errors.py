"""The error types featx raises for problems a user can fix.

The exit-status rule of the command line follows them:

- :class:`FeatxUsageError` -- the command was asked for something that cannot be: an unknown head,
  parameter, backbone, weights, layer, precision or device name, a value out of range, a named
  input file that does not exist, a pipeline file that does not validate. Nothing was done.
  Exit status **2** (as for click's own usage errors).
- :class:`FeatxError` -- the arguments were fine but the run failed: a damaged or unfinished
  cache, a full disk, weights that cannot be found offline, an interrupted extraction.
  Exit status **1**.

Either way the CLI prints one line, ``featx: error: <message>``. An error about one parameter names it
(``param="reuse"``): the library's message then reads ``reuse: ...`` and the CLI's ``--reuse: ...`` (the flag of
that parameter in the command that ran), so library code never names a command-line flag.
"""

__all__ = ["FeatxError", "FeatxUsageError"]


class FeatxError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    The CLI prints ``featx: error: <message>`` and exits with status 1; library users
    can catch this single type (it is also the base of :class:`FeatxUsageError`).
    """

    exit_code = 1

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        #: the parameter the error is about (a keyword of the library call), or ``None``
        self.param = param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message

    def for_flag(self, flag: str | None) -> str:
        """The message with the parameter named by its command-line ``flag`` (``--reuse``) when there is one."""
        return f"{flag}: {self.message}" if self.param and flag else str(self)


class FeatxUsageError(FeatxError):
    """A bad argument, caught before any work: the CLI exits with status 2."""

    exit_code = 2
