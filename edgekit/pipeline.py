"""Plan and run passes, measure every step, gate it on the tolerance, and record the report.

The pipeline knows passes only through ``Pass.accepts``/``produces``; it inserts the conversions a
recipe leaves implicit (torch -> ONNX -> OpenVINO) and ends in the runtime the profile prefers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit import runtimes
from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassNotApplicable, RecipeInvalid
from edgekit.passes import REGISTRY, Pass, PassContext
from edgekit.profiles import DeviceProfile
from edgekit.recipe import Recipe

Progress = Callable[[str], None]


@dataclass
class Step:
    name: str
    kind: str
    precision: str
    params: int
    param_reduction: float
    macs: int
    compute_reduction: float
    size_bytes: int
    latency_ms: float
    latency_p95_ms: float
    latency_runtime: str
    metric_name: str
    metric: float
    performance_drop: float
    step_performance_drop: float
    gate: str
    tolerance: float | None = None
    extra_metrics: dict[str, float] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)  # the bundle's minimums on extra metrics
    gate_reason: str = ""  # why the gate failed: the drop over the tolerance, or a floor not kept
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlannedPass:
    pass_: Pass
    inserted: bool  # added by the planner, not written in the recipe

    @property
    def name(self) -> str:
        return self.pass_.name


def target_runtime(recipe: Recipe, profile: DeviceProfile) -> str:
    runtime = recipe.runtime or profile.preferred_runtime()
    if not profile.supports(runtime):
        raise RecipeInvalid(
            f"recipe wants runtime {runtime!r} but profile {profile.name!r} lists only {profile.runtimes}"
        )
    return runtime


def runtime_device(runtime: str, profile: DeviceProfile) -> str:
    return next(f"{r}:{d}" for r, d in profile.runtime_order() if r == runtime)


def plan(recipe: Recipe, bundle: ModelBundle, profile: DeviceProfile) -> list[PlannedPass]:
    """The passes in order, with the conversions between kinds inserted; raises before any work is done.

    The target runtime says which kind of model it runs and which pass converts an ONNX model into it
    (``edgekit.runtimes``); the planner knows no runtime by name.
    """
    kind = "torch" if bundle.module is not None else "onnx"
    runtime = target_runtime(recipe, profile)
    target = runtimes.get(runtime)
    steps: list[PlannedPass] = []

    def convert_to(wanted: tuple[str, ...]) -> None:
        nonlocal kind
        if target.kind in wanted and "torch" not in wanted:
            wanted = (target.kind,)  # a pass that runs on either kind acts on the target runtime's form
        if kind == "torch" and "torch" not in wanted:
            steps.append(PlannedPass(REGISTRY["export_onnx"](REGISTRY["export_onnx"].Config()), True))
            kind = "onnx"
        if kind == "onnx" and "onnx" not in wanted:
            for rt in runtimes.REGISTRY.values():
                if rt.converter and rt.kind in wanted:
                    steps.append(PlannedPass(REGISTRY[rt.converter](REGISTRY[rt.converter].Config()), True))
                    kind = rt.kind
                    return

    for cfg in recipe.passes:
        p = REGISTRY[cfg.type](cfg)
        if p.runtime and p.runtime != runtime:
            raise RecipeInvalid(
                f"pass {p.name!r} produces a {p.runtime} model but the target runtime is {runtime}; "
                f"set 'runtime: {p.runtime}' in the recipe (profile {profile.name!r} allows {profile.runtimes})"
            )
        convert_to(p.accepts)
        if kind not in p.accepts:
            need = " or ".join(p.accepts)
            raise PassNotApplicable(
                f"pass {p.name!r} needs a {need} model but the model is {kind} at that point"
                + (" (an ONNX input cannot go back to torch)" if "torch" in p.accepts else "; reorder the recipe")
            )
        steps.append(PlannedPass(p, False))
        kind = p.output_kind(kind)
    convert_to((target.kind,))
    if kind != target.kind:
        hint = f"; set runtime: {runtimes.BY_KIND[kind].name}" if kind in runtimes.BY_KIND else ""
        raise RecipeInvalid(f"the recipe ends in an {kind} model, which {runtime} cannot run{hint}")
    return steps


def _latency_runtime(kind: str) -> str:
    return "host:torch" if kind == "torch" else runtimes.for_kind(kind).latency_label


def measure(
    name: str,
    artifact: Artifact,
    bundle: ModelBundle,
    ctx: PassContext,
    *,
    baseline: Step | None,
    previous: Step | None,
    tolerance: float | None,
    keeps_weights: bool = False,
) -> Step:
    """Evaluate an artifact: metric, params, MACs, size, host latency, and the rates against the baseline.
    ``keeps_weights``: the step converted the format or precision (``Pass.keeps_weights``), so its parameter
    and MAC counts are its input's."""
    from edgekit import evaluate
    from edgekit.hostrt import latency_ms, predictor

    # candidates of one search share artifacts (one ONNX export, one pruned model): each is evaluated once; the
    # value keeps the module alive, so an id is never reused for another module while the search runs
    key = ("measured", artifact.kind, str(artifact.path) if artifact.path is not None else id(artifact.module),
           tuple(sorted(artifact.runtime_config.items())))  # fmt: skip
    if key not in ctx.cache:
        predict = predictor(artifact, threads=ctx.threads)
        ctx.cache[key] = (artifact.module, *bundle.evaluate(predict), latency_ms(predict, bundle.example))
    _, metric, extra, lat = ctx.cache[key]
    if keeps_weights and previous is not None:
        params, macs = previous.params, previous.macs
    elif artifact.kind == "torch":
        params = evaluate.torch_params(artifact.module, bundle.example)
        macs = evaluate.torch_macs(artifact.module, bundle.example)
    elif artifact.kind == "onnx":
        params, macs = evaluate.onnx_params(artifact.path), evaluate.onnx_macs(artifact.path, bundle.example)
    else:  # an OpenVINO IR is only ever made from an ONNX model by a conversion
        assert previous is not None
        params, macs = previous.params, previous.macs
    base = baseline
    ref_metric = base.metric if base else metric
    drop = (ref_metric - metric) / ref_metric if ref_metric else 0.0
    step_drop = (previous.metric - metric) / previous.metric if previous and previous.metric else 0.0
    reasons = [] if base is None or tolerance is None or drop <= tolerance else \
        [f"{bundle.metric_name} drop {drop:.2%} > tolerance {tolerance:.2%}"]  # fmt: skip
    if base is not None:
        reasons += [f"{k} {extra.get(k, float('nan')):.4f} < floor {v:g}"
                    for k, v in unmet_floors(extra, bundle.floors).items()]  # fmt: skip
    gate = "baseline" if base is None else ("failed" if reasons else "passed")
    return Step(
        name=name,
        kind=artifact.kind,
        precision=artifact.precision,
        params=params,
        param_reduction=1 - params / base.params if base and base.params else 0.0,
        macs=macs,
        compute_reduction=1 - macs / base.macs if base and base.macs else 0.0,
        size_bytes=evaluate.size_bytes(artifact),
        latency_ms=lat["p50"],
        latency_p95_ms=lat["p95"],
        latency_runtime=_latency_runtime(artifact.kind),
        metric_name=bundle.metric_name,
        metric=metric,
        performance_drop=drop,
        step_performance_drop=step_drop,
        gate=gate,
        tolerance=tolerance,
        extra_metrics=extra,
        floors=dict(bundle.floors),
        gate_reason="; ".join(reasons),
        notes=dict(artifact.notes),
    )


def unmet_floors(extra: dict[str, float], floors: dict[str, float]) -> dict[str, float]:
    """The floors ``extra`` does not keep; a metric that is missing or NaN keeps none."""
    return {k: v for k, v in floors.items() if not extra.get(k, float("-inf")) >= v}


def baseline_artifact(bundle: ModelBundle) -> Artifact:
    if bundle.module is not None:
        return Artifact(kind="torch", module=bundle.module)
    return Artifact(kind="onnx", path=bundle.onnx_path)


@dataclass
class Outcome:
    steps: list[Step]
    artifact: Artifact
    failed: Step | None = None


def execute(
    planned: list[PlannedPass],
    bundle: ModelBundle,
    ctx: PassContext,
    *,
    recipe: Recipe,
    baseline: Step,
    progress: Progress = lambda _msg: None,
) -> Outcome:
    """Run the plan; a gate failure stops with ``failed`` set, unless the pass says ``on_fail: skip``."""
    artifact = baseline_artifact(bundle)
    steps = [baseline]
    for item in planned:
        item.pass_.check(bundle, artifact, ctx)
    for item in planned:
        p = item.pass_
        tolerance = p.config.tolerance or recipe.tolerance or ctx.profile.accuracy_tolerance
        progress(f"{p.name}: running")
        t0 = time.perf_counter()
        new = p.run(bundle, artifact, ctx)
        step = measure(
            p.name,
            new,
            bundle,
            ctx,
            baseline=baseline,
            previous=next(s for s in reversed(steps) if s.gate != "skipped"),  # a skipped step's model was dropped
            tolerance=tolerance,
            keeps_weights=p.keeps_weights,
        )
        step.seconds = round(time.perf_counter() - t0, 2)
        if step.gate == "failed" and p.config.on_fail == "skip" and not item.inserted:
            step.gate = "skipped"
            steps.append(step)
            progress(f"{p.name}: skipped ({step.gate_reason})")
            continue
        steps.append(step)
        progress(f"{p.name}: {bundle.metric_name}={step.metric:.4f} p50={step.latency_ms:.3f} ms gate={step.gate}")
        if step.gate == "failed":
            return Outcome(steps, new, failed=step)
        artifact = new
    return Outcome(steps, artifact)
