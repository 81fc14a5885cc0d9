"""Load a verified package into ONNX Runtime or OpenVINO and run it; fall back to CPU, never crash.

The manifest names an engine and a device; the profile's order (``runtimes`` in the device profile) may
add alternatives. A device that does not exist here (an NPU on a board without one, a CUDA provider on a
CPU build) or fails to compile the model falls back to the CPU with an event saying why. Runtimes are
imported only here, lazily, so the rest of the agent stays importable without them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent import runtimes
from edgekit_agent.manifest import Manifest

Event = Callable[[str, dict[str, Any]], None]


class SmokeTestFailed(Exception):
    """The new model's output on the package's sample is not the expected one: it must not serve."""


class RuntimeUnavailable(RuntimeError):
    """The package's engine is not installed on this device (the message names the edgekit-agent extra)."""


@dataclass
class Loaded:
    """A model ready to serve; ``predict`` is serialised by a lock so any thread may call it."""

    manifest: Manifest
    directory: Path
    engine: str
    device: str
    fallback_reason: str | None
    _run: Callable[[dict[str, Any]], list[Any]]
    input_names: list[str]
    output_names: list[str]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    generator: Any = None  # a generative package's runtime (runtimes.genai.Generator); None for tensor models

    @property
    def generative(self) -> bool:
        return self.generator is not None

    def predict(self, feed: dict[str, Any]) -> list[Any]:
        with self._lock:  # one inference at a time: runtimes' sessions are not all safe to share
            return self._run(feed)


def _not_tensors(_feed: dict[str, Any]) -> list[Any]:
    raise TypeError("this package generates text: send generate/request, not infer/request")


def load(directory: Path, manifest: Manifest, *, threads: int = 1, event: Event = lambda _k, _d: None) -> Loaded:
    """Load ``manifest.entry`` from ``directory`` on the manifest's device, else on the CPU (with an event)."""
    runtime = runtimes.get(manifest.engine)
    engine, cpu = runtime.name, runtime.cpu
    if not runtime.installed():
        raise RuntimeUnavailable(
            f"the package needs {engine}, which is not installed; pip install 'edgekit-agent[{runtime.extra}]'"
        )
    path = directory / manifest.entry
    devices = [manifest.device] + ([cpu] if manifest.device != cpu else [])
    reason = None
    for device in devices:
        try:
            if runtime.generative:
                gen = runtime.open_generator(path, device, threads=threads, config=manifest.runtime_config)
                why = reason if device != manifest.device else None
                names = [n for n, _ in manifest.sample.inputs]
                return Loaded(manifest, directory, engine, device, why, _not_tensors, names, ["tokens"], generator=gen)
            session = runtime.open(path, device, threads=threads, config=manifest.runtime_config)
        except Exception as exc:  # a missing device or a compile failure: the next device, never a crash
            reason = f"{engine}:{device}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}"
            if device != cpu:
                event("fallback", {"from": f"{engine}:{device}", "to": f"{engine}:{cpu}", "reason": reason})
            continue
        return Loaded(manifest, directory, engine, device, reason if device != manifest.device else None,
                      session.run, session.inputs, session.outputs)  # fmt: skip
    raise RuntimeError(f"cannot load {manifest.entry} on any device: {reason}")


def sample_inputs(model: Loaded) -> dict[str, Any]:
    """The package's sample inputs, by input name."""
    import numpy as np

    return {name: np.load(model.directory / file, allow_pickle=False) for name, file in model.manifest.sample.inputs}


def sample_fidelity(model: Loaded) -> dict[str, Any]:
    """The model's outputs on the package's sample against the expected ones, per output: ``ok``, the largest
    absolute error and the bound the manifest allows (``atol + rtol * max|expected|``), or ``problem``."""
    import numpy as np

    m = model.manifest
    if model.generative:
        return _generation_fidelity(model)
    outputs = model.predict(sample_inputs(model))
    report: dict[str, Any] = {"ok": len(outputs) == len(m.sample.outputs), "outputs": []}
    if not report["ok"]:
        report["problem"] = f"the model gave {len(outputs)} outputs, the sample has {len(m.sample.outputs)}"
    for (name, file), actual in zip(m.sample.outputs, outputs, strict=False):
        expected = np.load(model.directory / file, allow_pickle=False)
        actual = np.asarray(actual)
        row: dict[str, Any] = {"name": name}
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            row["problem"] = (f"output {name!r} is {actual.dtype}{list(actual.shape)}, expected "
                              f"{expected.dtype}{list(expected.shape)}")  # fmt: skip
        elif not np.all(np.isfinite(actual)):
            row["problem"] = f"output {name!r} has NaN or Inf"
        else:
            err = float(np.abs(actual.astype(np.float64) - expected).max()) if actual.size else 0.0
            bound = m.sample.atol + m.sample.rtol * (float(np.abs(expected).max()) if expected.size else 0.0)
            row |= {"max_abs_error": err, "allowed": bound}
            if err > bound:
                row["problem"] = f"output {name!r} differs from the sample by {err:.4g} (allowed {bound:.4g})"
        report["ok"] = report["ok"] and "problem" not in row
        report["outputs"].append(row)
    return report


def _generation_fidelity(model: Loaded) -> dict[str, Any]:
    """A generative package's sample: its prompt ids, and the tokens the host generated greedily from them.
    The device generates as many and compares the common prefix: at temperature 0 the runtimes agree token for
    token unless two logits tie within rounding (another ISA's kernels), so the package allows a tail of
    ``rtol`` x tokens to differ after the first divergence (0: exact)."""
    import numpy as np

    m = model.manifest
    prompt = np.load(model.directory / m.sample.inputs[0][1], allow_pickle=False).reshape(-1)
    expected = [int(t) for t in np.load(model.directory / m.sample.outputs[0][1], allow_pickle=False).reshape(-1)]
    got = model.generator.generate([int(t) for t in prompt], max_new_tokens=len(expected), ignore_eos=True).tokens
    pairs = list(zip(got, expected, strict=False))
    same = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    agreement = same / max(len(expected), 1)
    row: dict[str, Any] = {"name": "tokens", "prefix_agreement": round(agreement, 4), "allowed": 1 - m.sample.rtol}
    if agreement < 1 - m.sample.rtol - 1e-9:
        row["problem"] = (f"greedy generation agrees with the sample on {same} of {len(expected)} tokens "
                          f"(the package needs {1 - m.sample.rtol:.0%})")  # fmt: skip
    return {"ok": "problem" not in row, "outputs": [row]}


def smoke_test(model: Loaded, *, warmup: int = 3) -> None:
    """Run the package's sample and compare with its expected output; raises SmokeTestFailed with the reason.

    Also the warm-up: the first inferences (allocation, kernel selection) happen here, not on a user's request.
    """
    if not model.generative:
        feed = sample_inputs(model)
        for _ in range(max(warmup - 1, 0)):
            model.predict(feed)
    report = sample_fidelity(model)
    if not report["ok"]:
        problem = next((o["problem"] for o in report["outputs"] if "problem" in o), report.get("problem"))
        raise SmokeTestFailed(problem)
