"""The one error type featx raises for problems a user can fix."""

__all__ = ["FeatxError"]


class FeatxError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    The CLI prints ``featx: error: <message>`` and exits with status 1; library users
    can catch this single type.
    """
