"""``edgekit package``: load, plan, run (or search with --auto), then write the model files and report.json.

The output directory is replaced only when the whole run succeeded, so a failing run never destroys the
previous good output.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.auto import CandidateResult, candidates, check_precisions, choose, is_parent, parent_of
from edgekit.bundle import ModelBundle
from edgekit.edgepkg import Signing
from edgekit.errors import (
    EdgekitError,
    ExportFailed,
    GateFailed,
    ModelTooLarge,
    NoCandidate,
    OutputNotWritable,
    RecipeInvalid,
    first_line,
)
from edgekit.passes import PassContext
from edgekit.pipeline import Progress, Step, baseline_artifact, execute, measure, plan, runtime_device, target_runtime
from edgekit.profiles import DeviceProfile, load_profile
from edgekit.recipe import Recipe, load_recipe, parse_recipe


@dataclass
class PackageResult:
    model: str
    profile: str
    runtime: str
    precision: str
    output_dir: str | None
    steps: list[Step]
    chosen: str | None
    plan: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] | None = None
    threads: int = 1
    dry_run: bool = False
    description: str = ""
    package_path: str | None = None
    latency_measured_on: str | None = None  # "host:<engine>", or "device:<id>:<engine>:<device>" (--measure-on)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "profile": self.profile,
            "runtime": self.runtime,
            "precision": self.precision,
            "output_dir": self.output_dir,
            "threads": self.threads,
            "dry_run": self.dry_run,
            "plan": self.plan,
            "steps": [s.to_dict() for s in self.steps],
            "chosen": self.chosen,
            "candidates": self.candidates,
            "model_description": self.description,
            "package_path": self.package_path,
            "latency_measured_on": self.latency_measured_on,
            "latency_note": "step latencies: this host's CPU, batch as in the model's example, p50 over >=30 runs"
            + (
                ""
                if not (self.latency_measured_on or "").startswith("device:")
                else f"; the candidates were ranked by the device's p50 ({self.latency_measured_on}, the worst device)"
            ),
        }


def written_by_edgekit(directory: Path) -> bool:
    """Whether everything in ``directory`` is something ``edgekit package`` writes: model files (any runtime's
    entry, sidecars, ONNX external data), ``sample/``, ``report.json``, ``*.edgepkg``, or ``--keep-candidates``
    folders (``NAME/candidate.json``). Anything else is the user's, and is not deleted without --force."""
    from edgekit_agent.runtimes import ALL
    from edgekit_agent.runtimes.genai import FILES

    ours = {"report.json", "sample", *FILES} | {r.entry for r in ALL.values()}
    ours |= {Path(r.entry).with_suffix(x).name for r in ALL.values() for x in r.sidecars}
    for entry in directory.iterdir():
        if entry.name in ours or entry.suffix in (".edgepkg", ".data") or (entry / "candidate.json").is_file():
            continue
        return False
    return True


def check_writable(out: Path, *, option: str = "--out", force: bool = False) -> None:
    """Fail before any work when the output cannot be written (a parent that is a file, a read-only mount...),
    or when writing it would delete something of the user's: an existing directory edgekit did not write is
    replaced only with ``force``, and the current directory or one above it never."""
    here = Path.cwd().resolve()
    target = out.resolve()
    if not out.name or target == here or target in here.parents:
        raise OutputNotWritable(f"{option} {out} is the current directory or above it; give a new directory, "
                                "e.g. out/model")  # fmt: skip
    if out.exists() and not out.is_dir() and out.suffix != ".edgepkg":
        raise OutputNotWritable(f"{option} {out} exists and is not a directory; choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not force and not written_by_edgekit(out):
        raise OutputNotWritable(
            f"{option} {out} exists and was not written by edgekit; it would be replaced: choose a new directory, "
            "or pass --force to replace it"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".edgekit-probe-", dir=out.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputNotWritable(f"cannot write to {out.parent} ({exc.strerror}); choose a writable --out") from None


def _resolve_recipe(recipe: Any) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(recipe)
    return load_recipe(recipe)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def stage_files(stage: Path, artifact: Any, bundle: ModelBundle, *, threads: int) -> dict[str, Any]:
    """Copy the model files and write the smoke-test sample; returns report.json's ``package`` section."""
    from edgekit.hostrt import io_spec, predictor
    from edgekit.runtimes import for_kind

    runtime = for_kind(artifact.kind).runtime
    entry = Path(runtime.entry)
    # the entry and its sidecars (an IR's .bin) take the runtime's names; other files (ONNX external data,
    # which the model names) keep theirs
    names = {p: p.name for p in artifact.files()} | {artifact.path: entry.name}
    names |= {artifact.path.with_suffix(s): entry.with_suffix(s).name for s in runtime.sidecars}
    model = {"format": runtime.model_format, "entry": runtime.entry}
    for src, name in names.items():
        shutil.copyfile(src, stage / name)
    inputs, outputs = io_spec(artifact)
    example = list(bundle.example.items())
    feed = {
        spec["name"]: np.asarray(bundle.example.get(spec["name"], example[i][1])).astype(spec["dtype"])
        for i, spec in enumerate(inputs)
    }
    expected = predictor(artifact, threads=threads)(feed)
    (stage / "sample").mkdir()
    sample: dict[str, Any] = {"inputs": [], "outputs": []}
    for kind, specs, arrays in (("input", inputs, list(feed.values())), ("output", outputs, expected)):
        for i, (spec, array) in enumerate(zip(specs, arrays, strict=True)):
            rel = f"sample/{kind}_{i}.npy"
            (stage / rel).write_bytes(_npy(array))
            sample[f"{kind}s"].append({"name": spec["name"], "file": rel})
    sample["rtol"] = artifact.smoke_rtol  # what the passes that made it declare (Pass.smoke_rtol)
    sample["atol"] = 1e-5
    return {
        "model": model,
        "files": sorted([*names.values(), *(r["file"] for r in sample["inputs"] + sample["outputs"])]),
        "inputs": inputs,
        "outputs": outputs,
        "sample": sample,
        "preprocessing": bundle.preprocessing,
        "postprocessing": bundle.postprocessing,
    }


def write_output(
    out: Path,
    report: dict[str, Any],
    stage_fn: Any,
    *,
    signing: Signing | None,
    package_file: Path | None,
) -> Path | None:
    """Stage everything next to ``out`` (``stage_fn(stage)`` copies the model and returns report.json's
    ``package`` section), then swap it in; returns the .edgepkg path when one was signed."""
    from edgekit.edgepkg import write_edgepkg

    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(stage, 0o755)  # mkdtemp makes it private; the output is an ordinary directory
        report["package"] = stage_fn(stage)
        (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        sealed = None
        if signing is not None:
            sealed = write_edgepkg(stage, package_file or stage, signing).path
        if package_file is not None:
            shutil.rmtree(stage, ignore_errors=True)
            return sealed
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        stage.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return out / sealed.name if sealed is not None else None
    except OSError as exc:
        raise OutputNotWritable(f"writing {out} failed ({exc.strerror}); free space or choose another --out") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _keep_candidate(dest: Path, result: CandidateResult) -> None:
    """Copy a built candidate's model files and its measured row (with the runtime settings it needs)."""
    artifact = result.artifact
    if artifact.kind == "torch":
        return
    try:
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for src in artifact.files():
            shutil.copyfile(src, dest / src.name)
        row = result.row() | {
            "kind": artifact.kind,
            "entry": artifact.path.name,
            "runtime_config": artifact.runtime_config,
        }
        (dest / "candidate.json").write_text(json.dumps(row, indent=2) + "\n")
    except OSError as exc:
        raise OutputNotWritable(
            f"writing candidate {result.name} to {dest} failed ({exc.strerror}); free space or choose another "
            "--keep-candidates"
        ) from None


def _gate_message(step: Step, profile: DeviceProfile) -> str:
    fix = (
        "raise 'tolerance' in the recipe, set 'on_fail: skip' on the pass, or use a gentler setting"
        if step.tolerance is not None and step.performance_drop > step.tolerance
        else "use a gentler setting or set 'on_fail: skip' on the pass"
    )
    return (
        f"step {step.name!r} failed its gate: {step.gate_reason} ({step.metric_name} now {step.metric:.4f}, "
        f"tolerance {step.tolerance:.2%} from profile {profile.name!r} or the recipe); {fix}"
    )


@dataclass
class _Job:
    """What run_package resolved before any work: the search space and where the result goes."""

    profile: DeviceProfile
    bundle: ModelBundle
    recipes: list[Recipe]
    strict: bool  # a --recipe: one candidate whose every failure is the user's error; --auto: a search
    out: Path
    package_file: Path | None
    keep: Path | None
    threads: int


def run_package(
    model: str | ModelBundle,
    *,
    profile: str | DeviceProfile,
    recipe: Any = None,
    auto: bool = False,
    out: str | Path,
    dry_run: bool = False,
    data: str | Path | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    only: list[str] | None = None,
    sign: Signing | None = None,
    keep_candidates: str | Path | None = None,
    force: bool = False,
    measure_on: Any = None,
    progress: Progress = lambda _msg: None,
) -> PackageResult:
    """Compress and convert ``model`` for ``profile`` and write the result to ``out`` (see module doc).

    A recipe is a search over exactly one candidate, in which any failure is an error; ``--auto`` searches
    the candidates of ``edgekit.auto`` and keeps the fastest within tolerance. With ``sign``, a signed
    .edgepkg is written too: inside ``out``, or as ``out`` itself when it ends in ``.edgepkg`` (then no
    directory is kept). With ``keep_candidates``, every candidate that built (within tolerance or not) is
    copied to ``DIR/NAME/`` with its row in ``candidate.json``, so a user can run the ones --auto did not
    choose instead of rebuilding them. An existing ``out`` that edgekit did not write is replaced only with
    ``force``. With ``measure_on`` (an ``edgekit.measure.MeasureOn``, --auto only) the candidates are ranked by
    what devices measured (edgekit.measure).
    """
    if measure_on is not None:
        _check_measure(measure_on, profile=profile, auto=auto, sign=sign)
    job = _prepare(model, profile=profile, recipe=recipe, auto=auto, out=out, data=data, only=only, sign=sign,
                   keep_candidates=keep_candidates, progress=progress, force=force,
                   input_shapes=input_shapes)  # fmt: skip
    plans = _plans(job)
    common = {"model": job.bundle.name, "profile": job.profile.name, "threads": job.threads,
              "description": job.bundle.description}  # fmt: skip
    if dry_run:
        first = job.recipes[0]
        return PackageResult(
            **common, runtime=runtime_device(target_runtime(first, job.profile), job.profile), precision="-",
            output_dir=str(job.out), steps=[], chosen=first.name if job.strict else None, dry_run=True,
            plan=[f"{name}: " + " -> ".join(p.name for p in steps) for name, steps in plans.items()],
        )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgekit-work-") as work:
        results = _search(job, plans, Path(work), progress)
        if not job.strict:
            _rank(job, results, progress)
        if measure_on is not None:
            best = _choose_on_devices(job, results, measure_on, sign, Path(work), progress)
        else:
            _say_host_ranking(job, progress)
            best = choose(results, None if job.strict else job.profile.latency_budget_ms)
        if best is None:
            errors = [c.error for c in results]
            if all(isinstance(e, ExportFailed) for e in errors):  # the model itself, not a candidate: say that
                raise errors[0]  # type: ignore[misc]
            table = "; ".join(f"{c.name}: {c.status} {c.reason}" for c in results)
            raise NoCandidate(
                f"no candidate for {job.profile.name!r} stays within tolerance and the profile's "
                f"budgets and beats fp32: {table}"
            )
        result = PackageResult(
            **common, runtime=runtime_device(best.runtime, job.profile), precision=best.artifact.precision,
            output_dir=str(job.out.resolve()), steps=best.steps, chosen=best.name, plan=[s.name for s in best.steps],
            candidates=None if job.strict else [c.row() for c in results],
            latency_measured_on=best.measured_on or f"host:{best.runtime}",
        )  # fmt: skip
        report = result.to_json()
        report["runtime_config"] = best.artifact.runtime_config
        sealed = write_output(job.out, report, lambda stage: stage_files(stage, best.artifact, job.bundle,
                              threads=job.threads), signing=sign, package_file=job.package_file)  # fmt: skip
        if job.package_file is not None:
            result.output_dir = None
        result.package_path = str(sealed.resolve()) if sealed is not None else None
        return result


def _check_measure(measure_on: Any, *, profile: str | DeviceProfile, auto: bool, sign: Signing | None) -> None:
    from edgekit.measure import MeasureInvalid, check

    if not auto:
        raise MeasureInvalid("--measure-on ranks --auto's candidates; use it with --auto (a recipe has one)")
    prof = load_profile(profile) if isinstance(profile, str) else profile
    check(measure_on, prof.name, signed=sign is not None)


def _say_host_ranking(job: _Job, progress: Progress) -> None:
    """A profile for another architecture than this host's: the ranking is the host's, and says so."""
    import platform

    host = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    if not job.strict and job.profile.arch != host:
        progress(f"the ranking is this {host} host's, not the {job.profile.arch} device's: add --measure-on DEVICE "
                 "to rank by what a device of this profile measures")  # fmt: skip


def _choose_on_devices(job: _Job, results: list[CandidateResult], measure_on: Any, sign: Signing | None,
                       work: Path, progress: Progress) -> CandidateResult | None:  # fmt: skip
    """Pack and sign each candidate within tolerance as it would be shipped, bench it on the devices, choose."""
    import uuid
    from dataclasses import replace

    from edgekit.measure import choose as choose_on_devices
    from edgekit.measure import measure_candidates

    assert sign is not None
    base, run = sign.version or "0", uuid.uuid4().hex[:8]  # run: two runs' candidates never share a file name

    def stage(r: CandidateResult) -> Path:
        dest = work / "measure" / r.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        report = {"model": job.bundle.name, "profile": job.profile.name, "threads": job.threads,
                  "runtime": runtime_device(r.runtime, job.profile), "precision": r.artifact.precision,
                  "steps": [s.to_dict() for s in r.steps], "chosen": r.name,
                  "runtime_config": r.artifact.runtime_config}  # fmt: skip
        signing = replace(sign, version=f"{base}+{r.name}")  # a candidate, named as one
        sealed = write_output(dest, report, lambda st: stage_files(st, r.artifact, job.bundle, threads=job.threads),
                              signing=signing,
                              package_file=dest.with_name(f"{job.bundle.name}-{r.name}-{run}.edgepkg"))  # fmt: skip
        assert sealed is not None
        return sealed

    measure_candidates(results, measure_on, stage, progress)
    return choose_on_devices(results, measure_on, job.profile.latency_budget_ms)


def _prepare(model: str | ModelBundle, *, profile: str | DeviceProfile, recipe: Any, auto: bool, out: str | Path,
             data: str | Path | None, only: list[str] | None, sign: Signing | None,
             keep_candidates: str | Path | None, progress: Progress, force: bool = False,
             input_shapes: dict[str, list[int]] | None = None) -> _Job:  # fmt: skip
    """Check everything a user can get wrong before any work (a bad key fails now, not after the search)."""
    from edgekit.modelsrc import load_model

    prof = load_profile(profile) if isinstance(profile, str) else profile
    check_precisions(prof)
    if (recipe is None) == (not auto):
        raise RecipeInvalid("give exactly one of --recipe R.yaml or --auto")
    rec = _resolve_recipe(recipe) if recipe is not None else None
    out = Path(out)
    package_file = out if out.suffix == ".edgepkg" else None
    if package_file is not None and sign is None:
        raise RecipeInvalid(f"--out {out} names a package file; give --key KEY to sign it (or --out a directory)")
    check_writable(out, force=force)
    keep = Path(keep_candidates) if keep_candidates is not None else None
    if keep is not None:
        check_writable(keep, option="--keep-candidates", force=force)
    if sign is not None:
        from edgekit.keys import load_signing_key

        load_signing_key(sign.key, passphrase=sign.passphrase)
    progress(f"loading model {model if isinstance(model, str) else model.name}")
    bundle = (load_model(model, data=Path(data) if data else None, input_shapes=input_shapes)
              if isinstance(model, str) else model)  # fmt: skip
    recipes = [rec] if rec is not None else candidates(bundle, prof)
    if only:
        unknown = set(only) - {r.name for r in recipes}
        if unknown:
            raise RecipeInvalid(f"unknown --only candidate(s) {sorted(unknown)}; known: {[r.name for r in recipes]}")
        recipes = [r for r in recipes if r.name in only or is_parent(r.name, target_runtime(r, prof))]
    threads = min(prof.num_threads, os.cpu_count() or 1)
    return _Job(prof, bundle, recipes, rec is not None, out, package_file, keep, threads)


def _plans(job: _Job) -> dict[str, Any]:
    """Each candidate's planned passes; one that cannot be planned is left out of a search (not of a recipe)."""
    plans = {}
    for r in job.recipes:
        try:
            plans[r.name] = plan(r, job.bundle, job.profile)
        except EdgekitError:
            if job.strict:
                raise
    return plans


def _search(job: _Job, plans: dict[str, Any], work: Path, progress: Progress) -> list[CandidateResult]:
    """Measure the baseline, then build and measure every candidate (one, for a recipe)."""
    cache: dict[Any, Any] = {}

    def ctx_for(name: str) -> PassContext:
        return PassContext(profile=job.profile, workdir=work / name, threads=job.threads,
                           static_shapes=job.profile.static_shapes, cache=cache)  # fmt: skip

    progress(f"baseline: evaluating{_load_note()}")
    baseline = measure("baseline", baseline_artifact(job.bundle), job.bundle, ctx_for("baseline"), baseline=None,
                       previous=None, tolerance=None)  # fmt: skip
    progress(f"baseline: {job.bundle.metric_name}={baseline.metric:.4f} p50={baseline.latency_ms:.3f} ms")
    results = []
    for r in job.recipes:
        runtime = target_runtime(r, job.profile)
        if r.name not in plans:
            results.append(CandidateResult(r.name, runtime, "-", None, None, None, None, "not-applicable",
                                           "plan failed"))  # fmt: skip
            continue
        progress(f"recipe {r.name}: " + " -> ".join(p.name for p in plans[r.name]) + _load_note())
        t0 = time.perf_counter()
        results.append(_candidate(job, r, runtime, plans[r.name], ctx_for(r.name), baseline, progress))
        results[-1].seconds = round(time.perf_counter() - t0, 2)
        if job.keep is not None and results[-1].artifact is not None:
            _keep_candidate(job.keep / r.name, results[-1])
        progress(f"recipe {r.name}: done in {time.perf_counter() - t0:.1f} s")
    return results


def _load_note() -> str:
    """A note when the host is busy (1-minute load average above its core count): its timings are noisy."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return ""
    return f" (host load average {load:.1f} on {cores} cores: timings are noisy)" if load > cores else ""


def _rank(job: _Job, results: list[CandidateResult], progress: Progress) -> None:
    """Time the candidates within tolerance again, interleaved, until each is told apart from the fastest
    and from its fp32 parent or the time budget is spent; their latencies become the interleaved medians
    with 95 % intervals (``edgekit.auto.choose`` reads those)."""
    from edgekit.hostrt import Timing, interleaved, predictor

    ok = {r.name: r for r in results if r.status == "ok" and r.artifact is not None}
    if len(ok) < 2:
        return
    pairs = [(n, p.name) for n, r in ok.items() if (p := parent_of(r, results)) is not None and p.name in ok]

    def settled(t: dict[str, Timing]) -> bool:
        fastest = min(t, key=lambda n: t[n].median)
        apart = [t[a].interval[1] < t[b].interval[0] or t[b].interval[1] < t[a].interval[0]
                 for a, b in [*pairs, *((n, fastest) for n in t if n != fastest)]]  # fmt: skip
        return all(apart)

    progress(f"ranking {len(ok)} candidates: interleaved timing{_load_note()}")
    timings = interleaved({n: predictor(r.artifact, threads=job.threads) for n, r in ok.items()},
                          job.bundle.example, settled=settled)  # fmt: skip
    for name, r in ok.items():
        t = timings[name]
        r.latency_ms, r.latency_interval_ms = t.median, t.interval
        r.steps[-1].latency_ms, r.steps[-1].latency_p95_ms = t.median, t.p95
    progress("ranking: " + ", ".join(f"{n} {t.median:.3f} ms ({t.interval[0]:.3f}-{t.interval[1]:.3f}, "
                                     f"{len(t.samples)} runs)" for n, t in timings.items()))  # fmt: skip


def _candidate(job: _Job, r: Recipe, runtime: str, steps: list[Any], ctx: PassContext, baseline: Step,
               progress: Progress) -> CandidateResult:  # fmt: skip
    """One candidate's row. In a search a candidate that fails is a row saying why; for a recipe, an error."""
    try:
        outcome = execute(steps, job.bundle, ctx, recipe=r, baseline=baseline, progress=progress)
    except EdgekitError as exc:
        if job.strict:
            raise
        return CandidateResult(r.name, runtime, "-", None, None, None, None, "not-applicable", exc.one_line(),
                               error=exc)  # fmt: skip
    except Exception as exc:
        if job.strict:
            raise
        reason = f"{type(exc).__name__}: {first_line(exc, 200)}"
        return CandidateResult(r.name, runtime, "-", None, None, None, None, "error", reason)
    if outcome.failed is not None and job.strict:
        raise GateFailed(_gate_message(outcome.failed, job.profile))
    last = outcome.steps[-1]
    status, reason = ("over-tolerance", outcome.failed.gate_reason) if outcome.failed else ("ok", "")
    budget = job.profile.max_model_mb
    if status == "ok" and last.size_bytes > budget * 2**20:
        reason = f"{last.size_bytes / 2**20:.2f} MB is over the profile's max_model_mb {budget:g}"
        if job.strict:
            raise ModelTooLarge(f"the packaged model of {r.name!r}: {reason} ({job.profile.name!r}); compress it "
                                "further (quantize, prune) or raise max_model_mb in the profile")  # fmt: skip
        status = "over-budget"
    lat = job.profile.latency_budget_ms
    if status == "ok" and job.strict and lat is not None and last.latency_ms > lat:  # --auto: choose() filters
        progress(f"recipe {r.name}: host p50 {last.latency_ms:.3f} ms is over the profile's latency_budget_ms "
                 f"{lat:g} (measured on this host, not on the device)")  # fmt: skip
    return CandidateResult(
        r.name, runtime, outcome.artifact.precision, last.metric, last.performance_drop, last.latency_ms,
        last.size_bytes, status, reason, steps=outcome.steps, artifact=outcome.artifact,
    )  # fmt: skip
