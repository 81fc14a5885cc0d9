"""edgekit: compress, convert, sign and ship ML models to edge devices.

Importing this package is cheap on purpose: torch, ONNX Runtime, OpenVINO and NNCF load only inside
the functions that use them, so ``edgekit --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgekit.build import PackageResult


def package(
    model: Any, *, profile: str, recipe: Any = None, auto: bool = False, out: str, **kwargs: Any
) -> PackageResult:
    """Compress and convert ``model`` for ``profile``; the CLI's ``edgekit package`` calls exactly this."""
    from edgekit.build import run_package

    return run_package(model, profile=profile, recipe=recipe, auto=auto, out=out, **kwargs)
