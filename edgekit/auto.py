"""``--auto``: try the recipes that make sense for a profile and model, keep the fastest within tolerance.

Rules a user can rely on: a candidate whose metric drop exceeds the tolerance is never chosen, and an
INT8 (or fp16) candidate that is slower on this host than the fp32 model of the same runtime is never
chosen either (ORT's INT8 is slower than fp32 on tiny models or CPUs without VNNI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekit import runtimes
from edgekit.bundle import ModelBundle
from edgekit.errors import ProfileInvalid
from edgekit.passes import PRECISIONS, precisions_of
from edgekit.profiles import DeviceProfile
from edgekit.recipe import Recipe, parse_recipe
from edgekit.runtimes import Shape

# Head and FFN pruning tried on a transformer encoder given in torch (prune_transformer with its least-squares
# refit). A gentle and a strong setting: on MiniLM-L6 one head in twelve already costs held-out cosine 0.993
# and a quarter of the FFN 0.97 after the refit, and gradient distillation on top made it worse (0.990 ->
# 0.981), so these candidates do not distil (docs/benchmarks.md has the curve).
TRANSFORMER_PRUNINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("prune-heads8", {"type": "prune_transformer", "heads": 1 / 12, "samples": 400}),
    ("prune-heads25-ffn25", {"type": "prune_transformer", "heads": 0.25, "ffn": 0.25, "samples": 400}),
)


def candidates(bundle: ModelBundle, profile: DeviceProfile) -> list[Recipe]:
    """fp32 parents first (one per runtime), then the variants whose passes write only precisions the
    profile lists (``Pass.precision``)."""
    transformer = bundle.model_type == "transformer"
    trainable = bundle.module is not None and bundle.train_batches is not None and not transformer
    prunings = TRANSFORMER_PRUNINGS if transformer and bundle.module is not None else ()
    shape = Shape(transformer=transformer, trainable=trainable, student=bundle.student, prunings=prunings)
    recipes = [parse_recipe(c, source=f"auto candidate {c['name']}") for rt in runtimes.REGISTRY.values()
               if profile.supports(rt.name) for c in rt.candidates(shape)]  # fmt: skip
    return [r for r in recipes if precisions_of(r.passes) <= set(profile.precisions)]


def known_precisions() -> tuple[str, ...]:
    """What a profile may list: what the passes write and what a runtime runs a model in by itself."""
    return tuple(sorted({*PRECISIONS, *(p for rt in runtimes.REGISTRY.values() for p in rt.executes)}))


def check_precisions(profile: DeviceProfile) -> None:
    """A profile precision nothing produces is a typo or a missing pass: said now, not silently ignored."""
    unknown = [p for p in profile.precisions if p not in known_precisions()]
    if unknown:
        raise ProfileInvalid(
            f"profile {profile.name!r} lists precision(s) {', '.join(unknown)}, which no pass writes and no runtime "
            f"runs (known: {', '.join(known_precisions())}); remove them or add a pass that declares them"
        )


def is_parent(name: str, runtime: str) -> bool:
    """Whether candidate ``name`` is ``runtime``'s fp32 parent, which every other candidate is compared with."""
    return name == runtimes.get(runtime).parent


@dataclass
class CandidateResult:
    name: str
    runtime: str
    precision: str
    metric: float | None
    performance_drop: float | None
    latency_ms: float | None
    size_bytes: int | None
    status: str  # ok | over-tolerance | over-budget | slower-than-fp32 | not-applicable | error
    reason: str = ""
    seconds: float | None = None  # wall time to build and measure this candidate
    steps: list[Any] = field(default_factory=list)
    artifact: Any = None
    error: Exception | None = None  # what stopped a candidate that did not build
    latency_interval_ms: tuple[float, float] | None = None  # 95 % interval of the median (interleaved timing)
    # where latency_ms was measured: "host:<engine>", or "device:<id>:<engine>:<device>" (--measure-on, the
    # worst device), with the host's figure and each device's kept (edgekit.measure)
    measured_on: str | None = None
    host_latency_ms: float | None = None
    host_latency_interval_ms: tuple[float, float] | None = None
    device_figures: dict[str, Any] | None = None
    energy_mj: float | None = None  # marginal energy per inference on the worst device (--measure-on)
    energy_is_estimate: bool | None = None

    def row(self) -> dict[str, Any]:
        """What the report keeps of a candidate: its figures and, where the model has them, the extra
        metrics of its last step (the floors a candidate is also judged on)."""
        extra = {"extra_metrics": dict(self.steps[-1].extra_metrics)} if self.steps else {}
        return extra | {
            k: getattr(self, k)
            for k in (
                "name",
                "runtime",
                "precision",
                "metric",
                "performance_drop",
                "latency_ms",
                "size_bytes",
                "status",
                "reason",
                "seconds",
                "latency_interval_ms",
                "measured_on",
                "host_latency_ms",
                "host_latency_interval_ms",
                "device_figures",
                "energy_mj",
                "energy_is_estimate",
            )
        }


def _interval(r: CandidateResult) -> tuple[float, float]:
    assert r.latency_ms is not None
    return r.latency_interval_ms or (r.latency_ms, r.latency_ms)


def faster(a: CandidateResult, b: CandidateResult) -> bool:
    """``a`` is faster than ``b`` only when its latency interval lies wholly below ``b``'s."""
    return _interval(a)[1] < _interval(b)[0]


def parent_of(r: CandidateResult, results: list[CandidateResult]) -> CandidateResult | None:
    """The fp32 candidate of ``r``'s runtime that built within tolerance (None for a parent itself)."""
    if is_parent(r.name, r.runtime):
        return None
    return next((p for p in results if p.runtime == r.runtime and is_parent(p.name, p.runtime) and p.status == "ok"),
                None)  # fmt: skip


def choose(results: list[CandidateResult], latency_budget_ms: float | None = None) -> CandidateResult | None:
    """Refuse compressed candidates measurably slower than their runtime's fp32 parent, then those measurably
    over the profile's latency budget (the whole interval above it: a host figure, said so in the reason); of
    the rest, those not measurably slower than the fastest are tied, and the tie goes to the smallest, then
    simplest."""
    for r in results:
        parent = parent_of(r, results)
        if r.status == "ok" and r.precision != "fp32" and parent is not None and faster(parent, r):
            lo, hi = _interval(parent)
            r.status = "slower-than-fp32"
            r.reason = f"{r.latency_ms:.3f} ms vs fp32 parent {parent.latency_ms:.3f} ms (interval {lo:.3f}-{hi:.3f})"
    for r in results:
        if r.status == "ok" and latency_budget_ms is not None and _interval(r)[0] > latency_budget_ms:
            lo, hi = _interval(r)
            r.status = "over-latency-budget"
            r.reason = (f"{r.latency_ms:.3f} ms (interval {lo:.3f}-{hi:.3f}) on this host is over the profile's "
                        f"latency_budget_ms {latency_budget_ms:g}")  # fmt: skip
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return None
    fastest = min(ok, key=lambda r: r.latency_ms or 0.0)
    tied = [r for r in ok if not faster(fastest, r)]
    return min(tied, key=lambda r: (r.size_bytes or 0, len(r.steps), r.latency_ms or 0.0))
