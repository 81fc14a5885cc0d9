"""User-facing errors: each one becomes a single line on stderr and a non-zero exit code.

Every message names the problem and the fix; the CLI's central formatter prints ``ClassName: message``
and never a traceback for these.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error a user can cause and fix; ``exit_code`` is what the CLI returns."""

    exit_code = 2

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{type(self).__name__}: {text}"


class ProfileNotFound(EdgekitError):
    pass


class ProfileInvalid(EdgekitError):
    pass


class RecipeInvalid(EdgekitError):
    pass


class ModelNotFound(EdgekitError):
    pass


class PassNotApplicable(EdgekitError):
    pass


class ExportFailed(EdgekitError):
    pass


class PassFailed(EdgekitError):
    pass


class GateFailed(EdgekitError):
    exit_code = 3


class OutputNotWritable(EdgekitError):
    pass


class NoCandidate(EdgekitError):
    exit_code = 3
