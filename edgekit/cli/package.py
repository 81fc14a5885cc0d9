"""``edgekit package MODEL --profile P (--recipe R.yaml | --auto) --out DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.cli import _options as opt
from edgekit.console import err, out, print_json, stdout_to_stderr


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} kB"


def _computes(step: Any) -> str:
    """Where the host computes in another precision than the step's weights (fp16 IR on a CPU without fp16)."""
    real = step.notes.get("host_execution_precision")
    return f" (computes {real} here)" if real and real != step.precision else ""


def render_steps(result: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"{result.model} -> {result.profile} ({result.runtime}, {result.precision})")
    for col in (
        "step",
        "params",
        "param red.",
        "MACs",
        "compute red.",
        "size",
        "p50 ms",
        "latency on",
        "metric",
        "drop",
        "gate",
    ):
        table.add_column(col, justify="left" if col in {"step", "latency on", "gate"} else "right")
    on_devices = any("device_latency" in s.notes for s in result.steps)
    if on_devices:  # --measure-on: the chosen candidate's figures on each device next to the host's
        table.add_column("device p50 ms", justify="left")
    for s in result.steps:
        row = [
            s.name, f"{s.params:,}", f"{s.param_reduction:.1%}", f"{s.macs:,}", f"{s.compute_reduction:.1%}",
            _fmt_bytes(s.size_bytes), f"{s.latency_ms:.3f}", s.latency_runtime + _computes(s),
            f"{s.metric_name} {s.metric:.4f}", f"{s.performance_drop:.2%}", s.gate,
        ]  # fmt: skip
        if on_devices:
            figures = s.notes.get("device_latency") or {}
            row.append(", ".join(f"{f['p50_ms']:.3f} on {d}" for d, f in sorted(figures.items())) or "-")
        table.add_row(*row)
    return table


def render_candidates(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="--auto candidates (fastest within tolerance wins; overlapping 95 % intervals are a tie, won "
                  "by the smaller model; a compressed one measurably slower than its fp32 never wins)")  # fmt: skip
    for col in ("candidate", "precision", "metric", "drop", "p50 ms (95 % interval)", "size", "status"):
        table.add_column(col)
    if any(r.get("measured_on") for r in rows):
        table.add_column("p50 measured on")
        table.add_column("host p50 ms")
    for r in rows:
        extra = [r.get("measured_on") or "host", "-" if r.get("host_latency_ms") is None else
                 f"{r['host_latency_ms']:.3f}"] if any(x.get("measured_on") for x in rows) else []  # fmt: skip
        table.add_row(
            r["name"], r["precision"], "-" if r["metric"] is None else f"{r['metric']:.4f}",
            "-" if r["performance_drop"] is None else f"{r['performance_drop']:.2%}",
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}" + _interval(r.get("latency_interval_ms")),
            "-" if r["size_bytes"] is None else _fmt_bytes(r["size_bytes"]),
            r["status"] + (f" ({r['reason']})" if r["reason"] else ""),
            *extra,
        )  # fmt: skip
    return table


def render_llm(rows: list[dict[str, Any]]) -> Any:
    """A language model's candidates in its own units (host figures: this machine's CPU, greedy decoding)."""
    from rich.table import Table

    table = Table(title="language-model candidates on this host (p50 of the runs; decode = tokens after the first)")
    for col in ("candidate", "precision", "perplexity", "vs fp32", "first token ms", "decode tok/s", "size"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for r in rows:
        table.add_row(r["name"], r["precision"], f"{r['perplexity']:.3f}", f"{r['performance_drop']:+.2%}",
                      "-" if r["ttft_ms"] is None else f"{r['ttft_ms']:.1f}",
                      "-" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}",
                      _fmt_bytes(r["size_bytes"]))  # fmt: skip
    return table


def _interval(interval: Any) -> str:
    return f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""


def _input_shapes(values: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for value in values:
        name, _, dims = value.partition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            shape = []
        if not name or not shape or any(d <= 0 for d in shape):
            raise opt.OptionInvalid(f"--input-shape {value!r} must look like NAME=1x128 (positive sizes, 'x' between)")
        shapes[name] = shape
    return shapes


def package(
    model: Annotated[
        str,
        typer.Argument(help="digits_cnn | recommender | minilm | smollm2 | module:function | model.onnx | model.gguf"),
    ],
    profile: Annotated[str, typer.Option(help="device profile name or YAML path")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="output directory (replaced only on success), or FILE.edgepkg with --key")
    ],
    recipe: Annotated[Path | None, typer.Option(help="recipe YAML")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="search candidate recipes for the profile")] = False,
    only: Annotated[
        str | None, typer.Option(help="with --auto: comma-separated candidates to try (fp32 parents always run)")
    ] = None,
    keep_candidates: Annotated[
        Path | None, typer.Option(help="with --auto: also write every built candidate's model to DIR/NAME/")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="for an .onnx MODEL: .npz with one array per input")] = None,
    input_shape: Annotated[
        list[str],
        typer.Option(help="for an .onnx MODEL without --data: NAME=1x128, the shape of an input with dynamic axes"),
    ] = [],  # noqa: B006 (typer idiom)
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the resolved plan and exit")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="replace an existing --out directory that edgekit did not write")
    ] = False,
    measure_on: Annotated[
        str | None,
        typer.Option(help="with --auto: DEVICE[,DEVICE...] to bench every candidate on (the worst device ranks)"),
    ] = None,
    objective: Annotated[str, typer.Option(help="with --measure-on: latency | energy | size")] = "latency",
    allow_estimates: Annotated[
        bool, typer.Option("--allow-estimates", help="--objective energy may rank by estimated power")
    ] = False,
    measure_runs: Annotated[int, typer.Option(help="with --measure-on: timed runs per candidate and device")] = 200,
    latency_budget: Annotated[
        float | None, typer.Option(help="ms; overrides the profile's latency_budget_ms (filters --auto)")
    ] = None,
    broker: opt.Broker = opt.DEFAULT_BROKER,
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    db: opt.Db = opt.DEFAULT_DB,
    packages: opt.Packages = opt.DEFAULT_PACKAGES,
    fmt: opt.Format = "table",
    key: opt.Key = None,
    name: opt.Name = None,
    version: opt.Version = None,
    counter: opt.Counter = None,
    issued_at: opt.IssuedAt = None,
    expires_in: opt.ExpiresIn = 365,
) -> None:
    """Compress and convert a model for a device profile; writes model files, sample/ and report.json into
    --out, and with --key a signed .edgepkg."""
    from edgekit.build import run_package

    target = _with_budget(profile, latency_budget)
    measure = None
    if measure_on is not None:
        from edgekit.measure import MeasureOn

        measure = MeasureOn([d.strip() for d in measure_on.split(",") if d.strip()], broker, fleet, db, packages,
                            objective=objective, allow_estimates=allow_estimates, runs=measure_runs)  # fmt: skip

    def progress(msg: str) -> None:
        err.print(f"[dim]·[/] {msg}", highlight=False)

    sign = opt.signing(key, name=name, version=version, counter=counter, issued_at=issued_at,
                       expires_in=expires_in) if key else None  # fmt: skip
    from edgekit.llm.gguf import is_llm

    if is_llm(model):  # a GGUF language model: its own path (edgekit.llm.build)
        _no_tensor_options(only=only, keep_candidates=keep_candidates, data=data, input_shape=input_shape,
                           dry_run=dry_run, measure_on=measure_on, latency_budget=latency_budget)  # fmt: skip
        _show(_package_llm(model, profile, recipe, auto, out_dir, sign, force, progress), fmt)
        return
    with stdout_to_stderr():
        result = run_package(model, profile=target, recipe=recipe, auto=auto, out=out_dir, dry_run=dry_run, data=data,
                             input_shapes=_input_shapes(input_shape), only=[s.strip() for s in only.split(",")]
                             if only else None, keep_candidates=keep_candidates, force=force, sign=sign,
                             measure_on=measure, progress=progress)  # fmt: skip
    _show(result, fmt)


def _package_llm(model: str, profile: str, recipe: Path | None, auto: bool, out_dir: Path, sign: Any, force: bool,
                 progress: Any) -> Any:  # fmt: skip
    from edgekit.llm.build import run_llm_package

    with stdout_to_stderr():
        return run_llm_package(model, profile=profile, recipe=recipe, auto=auto, out=out_dir, sign=sign, force=force,
                               progress=progress)  # fmt: skip


def _no_tensor_options(**given: Any) -> None:
    """Options of tensor models that a language model has no use for: an error, not silently ignored."""
    used = [k for k, v in given.items() if v not in (None, False, [], ())]
    if used:
        flags = ", ".join("--" + k.replace("_", "-") for k in used)
        raise opt.OptionInvalid(f"{flags} do(es) not apply to a language model (GGUF); see docs/llm.md")


def _with_budget(profile: str, latency_budget: float | None) -> Any:
    """The profile, with --latency-budget in place of its latency_budget_ms."""
    if latency_budget is None:
        return profile
    from edgekit.profiles import load_profile

    if not latency_budget > 0:
        raise opt.OptionInvalid(f"--latency-budget {latency_budget} must be above 0 (ms)")
    return load_profile(profile).model_copy(update={"latency_budget_ms": latency_budget})


def _show(result: Any, fmt: str) -> None:
    if fmt == "json":
        print_json(result.to_json())
        return
    if result.dry_run:
        out.print(f"plan for {result.model} on {result.profile} (target {result.runtime}):", highlight=False)
        for line in result.plan:
            out.print(f"  {line}", highlight=False)
        return
    if result.candidates:
        out.print(render_candidates(result.candidates))
        if any("decode_tokens_per_s" in r for r in result.candidates):
            out.print(render_llm(result.candidates))
    out.print(render_steps(result))
    if result.output_dir:
        out.print(f"wrote {result.output_dir} (chosen: {result.chosen})", highlight=False)
    if result.package_path:
        out.print(f"signed package {result.package_path}", highlight=False)
