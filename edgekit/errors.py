"""User-facing errors: each one becomes a single line on stderr and a non-zero exit code.

Every message names the problem and the fix; the CLI's central formatter prints ``ClassName: message``
and never a traceback for these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


class ModelInvalid(EdgekitError):
    """A user's model or its inputs break the own-model contract (docs/own-models.md)."""


class PassNotApplicable(EdgekitError):
    pass


class ExportFailed(EdgekitError):
    pass


class PassFailed(EdgekitError):
    pass


class GateFailed(EdgekitError):
    exit_code = 3


class ModelTooLarge(EdgekitError):
    exit_code = 3


class OutputNotWritable(EdgekitError):
    pass


class NoCandidate(EdgekitError):
    exit_code = 3


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception: enough to name the problem in a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def describe_validation(exc: Any) -> str:
    """A pydantic ValidationError as ``where: what`` pairs, naming unknown keys so typos are obvious."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key (remove it or check its spelling)")
        else:
            parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def load_yaml(path: Path, error: type[EdgekitError], what: str) -> Any:
    """Parse a YAML file, turning every failure into ``error`` with the line number and the fix."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist; pass an existing YAML file") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{path}: not valid YAML{where}; fix the syntax") from None


class KeyExists(EdgekitError):
    pass


class KeyNotFound(EdgekitError):
    pass


class KeyInvalid(EdgekitError):
    pass


class PackageSourceInvalid(EdgekitError):
    pass
