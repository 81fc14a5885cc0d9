"""The host's side of each runtime, built on the agent's registry (``edgekit_agent.runtimes``).

The agent's ``Runtime`` says what a runtime is and how to open a session (the host's evaluation and
latency use that same code). What only the packager needs lives here: the pass that converts an ONNX
model into the runtime's form (None when it runs ONNX itself), the passes every candidate starts with,
and the compressed candidates ``--auto`` tries for it. Nothing outside ``runtimes/`` and ``passes/``
names a runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgekit_agent import runtimes as agent_runtimes
from edgekit_agent.runtimes import Runtime

from edgekit.runtimes import onnxruntime, openvino


@dataclass(frozen=True)
class Shape:
    """What ``--auto`` may build for a model: decided by the model, not the runtime."""

    transformer: bool
    trainable: bool
    student: dict[str, Any] | None
    # (label, prune_transformer settings) for a BERT-style encoder given in torch; each runtime adds one
    # pruned + INT8 candidate per entry (``edgekit.auto.TRANSFORMER_PRUNINGS``)
    prunings: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclass(frozen=True)
class HostRuntime:
    runtime: Runtime
    converter: str | None  # the pass from ONNX to this runtime's kind; None: it runs the ONNX file
    base: Callable[[Shape], list[dict[str, Any]]]  # passes every candidate for this runtime starts with
    compressed: Callable[[Shape, list[dict[str, Any]]], list[dict[str, Any]]]  # INT8 and other candidates
    executes: tuple[str, ...] = ()  # precisions it runs an fp32 model in by itself (a hint, not a pass)

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def kind(self) -> str:
        return self.runtime.kind

    @property
    def parent(self) -> str:
        """The fp32 candidate every compressed one of this runtime is compared with (``--auto``)."""
        return f"{self.name}-fp32"

    @property
    def latency_label(self) -> str:
        return f"host:{self.name}:CPU"

    def candidates(self, shape: Shape) -> list[dict[str, Any]]:
        """``--auto``'s recipes for this runtime: the fp32 parent first, then fp16 and the compressed ones
        (``edgekit.auto`` keeps those whose passes' precisions the profile lists)."""
        base = self.base(shape)
        out = [{"name": self.parent, "runtime": self.name, "passes": base}]
        out.append({"name": f"{self.name}-fp16", "runtime": self.name, "passes": [*base, {"type": "fp16"}]})
        return out + [c | {"runtime": self.name} for c in self.compressed(shape, base)]


REGISTRY: dict[str, HostRuntime] = {
    m.NAME: HostRuntime(agent_runtimes.get(m.NAME), m.CONVERTER, m.base, m.compressed, m.EXECUTES)
    for m in (onnxruntime, openvino)
}
BY_KIND = {r.kind: r for r in REGISTRY.values()}
NAMES = tuple(REGISTRY)


def get(name: str) -> HostRuntime:
    return REGISTRY[agent_runtimes.get(name).name]  # the agent's LookupError names the known ones


def for_kind(kind: str) -> HostRuntime:
    """The runtime that runs artifacts of ``kind`` on this host (``onnx``, ``openvino``)."""
    if kind not in BY_KIND:
        raise LookupError(f"no runtime runs a {kind} artifact (known kinds: {', '.join(BY_KIND)})")
    return BY_KIND[kind]
