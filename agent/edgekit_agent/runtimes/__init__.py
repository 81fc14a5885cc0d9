"""The runtimes a package can name, in one registry that the agent and the host share.

A runtime is described once (``Runtime``): its name (a manifest's ``runtime.engine``, a profile's
``NAME:DEVICE``, a recipe's ``runtime``), the module to import and the ``edgekit-agent`` extra that
installs it, the model format and files it runs, its CPU device, and how to open a session. The
description is plain data; the runtime's own library is imported only when a session is opened.

Adding a runtime: one module here with a ``RUNTIME`` (and its session code), one line in ``REGISTRY``,
an extra in agent/pyproject.toml; on the host, one module in ``edgekit/runtimes/`` (its converter and
``--auto`` candidates). See docs/architecture.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from edgekit_agent.runtimes import genai, ort, ov


@dataclass(frozen=True)
class Session:
    """An opened model: ``run(feed) -> outputs`` in output order, and its input and output names."""

    run: Callable[[dict[str, Any]], list[Any]]
    inputs: list[str]
    outputs: list[str]


@dataclass(frozen=True)
class Runtime:
    name: str  # the engine name everywhere: manifest, profiles ("NAME:DEVICE"), recipes, reports
    module: str  # what to import (also what find_spec looks for)
    extra: str  # pip install 'edgekit-agent[EXTRA]'
    model_format: str  # manifest model.format
    kind: str  # the host artifact kind it runs ("onnx", "openvino")
    entry: str  # the model's file name in a package
    sidecars: tuple[str, ...]  # suffixes of files that travel with the entry (an IR's .bin)
    cpu: str  # the device every host and board has
    static_shape_devices: tuple[str, ...]  # devices that need static input shapes (an NPU)
    preferred_on: tuple[str, ...]  # machine architectures where it is the first choice
    impl: str  # the module with open_session / io_spec / devices (imports the runtime lazily)
    generative: bool = False  # a language model: open_generator, generate/request; no tensor session

    def installed(self) -> bool:
        return find_spec(self.module) is not None

    def _impl(self) -> Any:
        return importlib.import_module(self.impl)

    def open(self, path: Path, device: str, *, threads: int, config: dict[str, str] | None = None) -> Session:
        """A session on ``device`` (LookupError when the device does not exist here)."""
        run, inputs, outputs = self._impl().open_session(path, device, threads, dict(config or {}))
        return Session(run, inputs, outputs)

    def open_generator(self, path: Path, device: str, *, threads: int, config: dict[str, str] | None = None) -> Any:
        """A generative runtime's generator on ``device`` (LookupError when the device does not exist here)."""
        return self._impl().open_generator(path, device, threads, dict(config or {}))

    def io_spec(self, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Names, dtypes and shapes (None = dynamic) of the model's inputs and outputs."""
        return self._impl().io_spec(path)

    def devices(self) -> list[str]:
        """The devices this runtime finds on this machine (imports it)."""
        return self._impl().devices()

    def files(self, entry: Path) -> list[Path]:
        return [entry, *(entry.with_suffix(s) for s in self.sidecars)]


# tensor in, tensor out: what every classifier, ranker and encoder package runs on (and --auto converts to)
REGISTRY: dict[str, Runtime] = {r.name: r for r in (Runtime(**ort.DESCRIPTION), Runtime(**ov.DESCRIPTION))}
# text in, text out, token by token: language-model packages (edgekit.llm); apart, so nothing that converts
# or ranks tensor models ever picks one
GENERATIVE: dict[str, Runtime] = {r.name: r for r in (Runtime(**genai.DESCRIPTION),)}
ALL: dict[str, Runtime] = REGISTRY | GENERATIVE
BY_FORMAT = {r.model_format: r for r in REGISTRY.values()}
BY_KIND = {r.kind: r for r in REGISTRY.values()}


def get(name: str) -> Runtime:
    try:
        return ALL[name]
    except KeyError:
        raise LookupError(f"unknown runtime {name!r} (known: {', '.join(ALL)})") from None


def installed() -> list[str]:
    """Runtimes installed here, found without importing them (OpenVINO alone costs ~80 MB of RSS)."""
    return [name for name, r in ALL.items() if r.installed()]
