"""``edgekit package --auto --measure-on DEVICE[,DEVICE...]``: choose by the devices' numbers, not the host's.

INT8 against fp32, one runtime against another: the order changes with the ISA (MiniLM's OpenVINO INT8 is
4.9x torch on a Xeon with AMX and slower than OpenVINO fp32 on an AVX2-only EPYC), so a choice for a board
made on the host can be wrong. Here every candidate within tolerance is packed and signed as the chosen one
would be, put into the repository ``edgekit serve`` answers from, and benched on every listed device
(``edgekit.fleet.bench``, which also stores the answers); its latency becomes the *worst* device's median
with that median's 95 % interval, so ``edgekit.auto.choose`` applies the same rule to device figures as to
host ones. ``--objective energy`` ranks by the marginal energy per inference the devices measured (refused
when a device only estimates it, unless ``--allow-estimates``); ``size`` by the packed size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

OBJECTIVES = ("latency", "energy", "size")


class MeasureInvalid(EdgekitError):
    """A --measure-on setting that cannot work (no key, a device of another profile, an estimate for energy)."""


@dataclass
class MeasureOn:
    devices: list[str]
    broker: str
    fleet: str
    db: str
    packages: Path  # the repository edgekit serve answers chunk requests from
    objective: str = "latency"
    allow_estimates: bool = False
    runs: int = 200
    timeout: float = 300.0  # per candidate: every device's answer, download included
    answers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # candidate -> device -> answer


def check(measure: MeasureOn, profile: str, *, signed: bool) -> None:
    """Before any work: the devices exist in the store and run this profile, and candidates can be signed."""
    from edgekit.fleet.deploy import targets
    from edgekit.fleet.store import Store

    if measure.objective not in OBJECTIVES:
        raise MeasureInvalid(f"--objective {measure.objective!r} must be one of {', '.join(OBJECTIVES)}")
    if not signed:
        raise MeasureInvalid("--measure-on needs --key: a device verifies every candidate as it would an install")
    if not measure.devices:
        raise MeasureInvalid("--measure-on needs at least one device id")
    from edgekit.fleet.bench import BenchFailed, Options
    from edgekit.fleet.bench import check as check_request

    try:
        check_request(Options(runs=measure.runs, warmup=min(20, measure.runs)))
    except BenchFailed as exc:
        raise MeasureInvalid(f"--measure-runs {measure.runs}: {exc}") from None
    rows = targets(Store(measure.db), measure.fleet, devices=measure.devices, group=None, profile=profile)
    offline = [r["device"] for r in rows if r["status"] != "online"]
    if offline:  # said now, not after the whole search and a bench timeout
        raise MeasureInvalid(f"--measure-on: {', '.join(offline)} is offline in the fleet store; start its agent "
                             "(and edgekit serve ingesting into --db) or leave it out")  # fmt: skip


def measure_candidates(results: list[Any], measure: MeasureOn, stage: Callable[[Any], Path],
                       progress: Callable[[str], None]) -> None:  # fmt: skip
    """Bench each candidate within tolerance on every device; device figures replace the host's for ranking
    (the host's stay in ``host_latency_ms``). A device answering anything but ``ok`` with a sample that
    matches leaves the candidate out (``device-failed``); a device that does not answer stops the run."""
    from edgekit.fleet.bench import BenchFailed, Options, run_bench, store_answers
    from edgekit.fleet.deploy import release
    from edgekit.fleet.store import Store

    store = Store(measure.db)
    for r in [r for r in results if r.status == "ok" and r.artifact is not None]:
        rel = release(stage(r), measure.packages)
        progress(f"measuring {r.name} on {', '.join(measure.devices)}")
        try:
            answers = run_bench(measure.broker, measure.fleet, rel, measure.devices,
                                Options(runs=measure.runs, warmup=min(20, measure.runs), timeout=measure.timeout),
                                progress)  # fmt: skip
        finally:  # a candidate is not a release: out of serve's repository once the devices have answered
            rel.path.unlink(missing_ok=True)
        store_answers(store, measure.fleet, answers)
        missing = [d for d in measure.devices if d not in answers.by_device]
        if missing:
            raise BenchFailed(f"no bench answer for candidate {r.name} within {measure.timeout:g} s from "
                              f"{', '.join(missing)}; is its agent online and edgekit serve answering from "
                              f"{measure.packages}?")  # fmt: skip
        measure.answers[r.name] = answers.by_device
        _apply(r, answers.by_device)


def _first(answer: dict[str, Any]) -> dict[str, Any]:
    return next((b for b in answer.get("batches") or [] if "p50_ms" in b), {})


def _apply(r: Any, answers: dict[str, dict[str, Any]]) -> None:
    bad = {d: a.get("reason") or "its output differs from the package's sample" for d, a in answers.items()
           if a.get("status") != "ok" or not (a.get("sample") or {}).get("ok") or not _first(a)}  # fmt: skip
    if bad:
        r.status, r.reason = "device-failed", "; ".join(f"{d}: {why}" for d, why in sorted(bad.items()))
        return
    worst = max(answers, key=lambda d: _first(answers[d])["p50_ms"])
    first, a = _first(answers[worst]), answers[worst]
    r.host_latency_ms, r.host_latency_interval_ms = r.latency_ms, r.latency_interval_ms
    r.latency_ms, r.latency_interval_ms = first["p50_ms"], tuple(first["p50_interval_ms"])
    # an emulated agent (make test-arm64) is labelled: its latency is not a device's
    r.measured_on = f"device:{worst}:{a['engine']}:{a['device']}" + (" (emulated)" if a.get("emulated") else "")
    energies = [(a.get("power") or {}) for a in answers.values()]
    values = [e.get("marginal_energy_per_inference_mj") for e in energies]
    r.energy_mj = None if any(v is None for v in values) else max(values)
    r.energy_is_estimate = any(e.get("is_estimate") is not False for e in energies)
    r.device_figures = {d: {"p50_ms": _first(x)["p50_ms"], "p50_interval_ms": _first(x)["p50_interval_ms"],
                            "p95_ms": _first(x)["p95_ms"], "runtime": f"{x['engine']}:{x['device']}",
                            "marginal_energy_per_inference_mj": (x.get("power") or {}).get(
                                "marginal_energy_per_inference_mj"), "bench_id": x["id"]}
                        for d, x in answers.items()}  # fmt: skip
    last = r.steps[-1]
    last.notes = {**last.notes, "device_latency": r.device_figures, "host_latency_ms": r.host_latency_ms}


def choose(results: list[Any], measure: MeasureOn, latency_budget_ms: float | None) -> Any:
    """The choice by the objective, over device figures (``edgekit.auto.choose`` for latency)."""
    from edgekit.auto import choose as by_latency

    if measure.objective == "latency":
        return by_latency(results, latency_budget_ms)
    by_latency(results, latency_budget_ms)  # the same refusals (slower than fp32, over the budget) first
    ok = [r for r in results if r.status == "ok"]
    if measure.objective == "size" or not ok:
        return min(ok, key=lambda r: (r.size_bytes or 0, r.latency_ms or 0.0), default=None)
    unmeasured = [r.name for r in ok if getattr(r, "energy_mj", None) is None]
    if unmeasured:
        raise MeasureInvalid(f"--objective energy: the devices measured no power for {', '.join(unmeasured)} (no "
                             "sensor and no --power-model on the agent); use --objective latency")  # fmt: skip
    estimated = [r.name for r in ok if r.energy_is_estimate]
    if estimated and not measure.allow_estimates:
        raise MeasureInvalid("--objective energy: the devices only estimate power (a --power-model, no sensor) for "
                             f"{', '.join(estimated)}; add --allow-estimates to rank by the estimate, or use "
                             "--objective latency")  # fmt: skip
    return min(ok, key=lambda r: (r.energy_mj, r.size_bytes or 0))
