"""``edgekit package smollm2|FILE.gguf --profile P (--recipe R.yaml | --auto)``: a language model, packaged.

The GGUF becomes the fp32 reference IR (edgekit.runtimes.genai); each candidate recipe is built from it
(NNCF weight compression) or from the file's own quantized weights (``weights: gguf``), then measured as a
device runs it: held-out perplexity, time to first token and decode tokens/s through the agent's runtime.
The gate is the perplexity's relative increase over the reference. ``--auto`` keeps the candidates within
tolerance and the profile's size limit, refuses one measurably slower than fp32, and picks the fastest
decoder; runs whose decode rates overlap (lowest to highest run) are a tie, won by the smaller package.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.build import PackageResult, check_writable, write_output
from edgekit.edgepkg import Signing
from edgekit.errors import GateFailed, ModelInvalid, NoCandidate, ProfileInvalid, RecipeInvalid
from edgekit.llm import evaluate, gguf, text
from edgekit.llm.compress import LLMRecipe, parse_recipe
from edgekit.pipeline import Step
from edgekit.profiles import DeviceProfile, load_profile
from edgekit.runtimes import genai

ENGINE = genai.NAME
CPU = genai.RUNTIME.cpu
SAMPLE_PROMPT = "The Python interpreter reads a program"
SAMPLE_TOKENS = 8
# a package's tolerance for the device's greedy tokens after the first divergence (runtime.py's sample check):
# another ISA's kernels can flip a near-tie; the first three quarters must agree
SAMPLE_RTOL = 0.25

# --auto's candidates, fastest-to-build first; the fp32 reference is measured in every run (the parent)
AUTO: tuple[dict[str, Any], ...] = (
    {"name": "gguf-native", "weights": "gguf"},
    {"name": "int8-asym", "weights": "int8_asym"},
    {"name": "int4-asym-g32", "weights": "int4_asym", "group_size": 32},
    {"name": "int4-sym-g32-se", "weights": "int4_sym", "group_size": 32, "scale_estimation": True},
)


@dataclass
class Measures:
    """How long and how much: held-out windows and the speed prompt."""

    heldout_windows: int = 16
    window_tokens: int = 256
    calibration_windows: int = 32
    prompt_tokens: int = 128
    new_tokens: int = 128
    runs: int = 3

    @classmethod
    def from_env(cls) -> Measures:
        """``EDGEKIT_LLM_QUICK=1`` (the test suite sets it, as it shortens latency loops): fewer and shorter
        windows and runs; the figures are then only good for checking that the path works."""
        if os.environ.get("EDGEKIT_LLM_QUICK") == "1":
            return cls(heldout_windows=6, window_tokens=128, calibration_windows=8, prompt_tokens=64, new_tokens=32,
                       runs=2)  # fmt: skip
        return cls()


@dataclass
class Candidate:
    recipe: LLMRecipe
    directory: Path
    perplexity: float = 0.0
    speed: evaluate.Speed | None = None
    size_bytes: int = 0
    status: str = "ok"
    reason: str = ""
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self, reference: float) -> dict[str, Any]:
        s = self.speed
        return {
            "name": self.recipe.name,
            "precision": self.recipe.precision,
            "metric": self.perplexity,
            "performance_drop": self.perplexity / reference - 1 if reference else None,
            "latency_ms": None if s is None else 1e3 / s.decode_tokens_per_s,
            "latency_interval_ms": None if s is None else [1e3 / s.decode_interval[1], 1e3 / s.decode_interval[0]],
            "size_bytes": self.size_bytes,
            "status": self.status,
            "reason": self.reason,
            "perplexity": self.perplexity,
            "ttft_ms": None if s is None else s.ttft_ms,
            "decode_tokens_per_s": None if s is None else s.decode_tokens_per_s,
        }


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def _recipes(recipe: Any, auto: bool) -> tuple[list[LLMRecipe], bool]:
    if (recipe is None) == (not auto):
        raise RecipeInvalid("give exactly one of --recipe R.yaml or --auto")
    if recipe is None:
        return [parse_recipe(dict(c), source=f"auto candidate {c['name']}") for c in AUTO], False
    if isinstance(recipe, LLMRecipe):
        return [recipe], True
    if isinstance(recipe, dict):
        return [parse_recipe(recipe, source="recipe")], True
    import yaml

    try:
        data = yaml.safe_load(Path(recipe).read_text())
    except OSError as exc:
        raise RecipeInvalid(f"cannot read recipe {recipe} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RecipeInvalid(f"{recipe} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    return [parse_recipe(data, source=str(recipe))], True


def _profile(profile: str | DeviceProfile) -> DeviceProfile:
    prof = load_profile(profile) if isinstance(profile, str) else profile
    if not prof.supports(genai.BASE_RUNTIME):
        raise ProfileInvalid(
            f"profile {prof.name!r} lists no {genai.BASE_RUNTIME} runtime ({prof.runtimes}); language models "
            f"run on {ENGINE}: choose a profile with {genai.BASE_RUNTIME}:{CPU}"
        )
    return prof


def _check_groups(recipe: LLMRecipe, info: gguf.GGUFInfo) -> None:
    """A group size must divide every matrix's input channels (the hidden and feed-forward widths): said now,
    not after the reference is built (NNCF would refuse it then)."""
    widths = [w for w in (info.hidden, info.ffn) if w]
    if recipe.group_size > 0 and any(w % recipe.group_size for w in widths):
        raise RecipeInvalid(
            f"recipe {recipe.name}: group_size {recipe.group_size} does not divide the model's input channels "
            f"({' and '.join(map(str, widths))}); use a divisor of them (e.g. 32) or -1"
        )


def _gate(c: Candidate, reference: float, profile: DeviceProfile) -> None:
    drop = c.perplexity / reference - 1
    if drop > c.recipe.perplexity_tolerance:
        c.status, c.reason = (
            "over-tolerance",
            (
                f"perplexity {c.perplexity:.3f} is {drop:+.1%} over the fp32 reference {reference:.3f} (tolerance "
                f"{c.recipe.perplexity_tolerance:.0%})"
            ),
        )
    elif c.size_bytes > profile.max_model_mb * 2**20:
        c.status, c.reason = "too-large", f"{c.size_bytes / 2**20:.1f} MB > the profile's {profile.max_model_mb} MB"


def _overlap(a: evaluate.Speed, b: evaluate.Speed) -> bool:
    return a.decode_interval[0] <= b.decode_interval[1] and b.decode_interval[0] <= a.decode_interval[1]


def choose(candidates: list[Candidate], reference: Candidate) -> Candidate | None:
    """Within tolerance and size; a compressed candidate measurably slower than fp32 never wins; the fastest
    decoder wins, a tie (overlapping run ranges) going to the smaller package."""
    ref = reference.speed
    for c in candidates:
        s = c.speed
        if c.status == "ok" and c is not reference and ref and s and s.decode_interval[1] < ref.decode_interval[0]:
            c.status, c.reason = (
                "slower-than-fp32",
                (f"{s.decode_tokens_per_s:.1f} tok/s vs fp32 {ref.decode_tokens_per_s:.1f}"),
            )
    ok = [c for c in candidates if c.status == "ok" and c.speed is not None]
    if not ok:
        return None
    fastest = max(ok, key=lambda c: c.speed.decode_tokens_per_s)  # type: ignore[union-attr]
    tied = [c for c in ok if c is fastest or _overlap(c.speed, fastest.speed)]  # type: ignore[arg-type]
    return min(tied, key=lambda c: (c.size_bytes, -c.speed.decode_tokens_per_s))  # type: ignore[union-attr]


def _step(name: str, c: Candidate, reference: Candidate, params: int, *, gate: str, kind: str) -> Step:
    s = c.speed
    assert s is not None
    drop = c.perplexity / reference.perplexity - 1
    return Step(
        name=name,
        kind=kind,
        precision=c.recipe.precision,
        params=params,
        param_reduction=0.0,
        macs=params,
        compute_reduction=0.0,
        size_bytes=c.size_bytes,
        latency_ms=1e3 / s.decode_tokens_per_s,
        latency_p95_ms=1e3 / s.decode_interval[0],
        latency_runtime=f"host:{ENGINE}:{CPU} (ms per decoded token)",
        metric_name="perplexity",
        metric=c.perplexity,
        performance_drop=drop,
        step_performance_drop=drop,
        gate=gate,
        tolerance=c.recipe.perplexity_tolerance,
        gate_reason=c.reason,
        extra_metrics={"ttft_ms": round(s.ttft_ms, 3), "decode_tokens_per_s": round(s.decode_tokens_per_s, 3)},
        notes=c.notes | {"ttft_prompt_tokens": s.prompt_tokens, "decode_new_tokens": s.new_tokens, "runs": s.runs},
        seconds=c.seconds,
    )


class Lab:
    """The reference, its token windows and a way to build and measure one candidate."""

    def __init__(
        self,
        gguf_path: Path,
        work: Path,
        profile: DeviceProfile,
        measures: Measures,
        progress: Callable,
        *,
        calibrate: bool = True,
    ) -> None:
        import time

        self.work, self.profile, self.m, self.progress, self.gguf = work, profile, measures, progress, gguf_path
        self.threads = profile.num_threads
        t0 = time.perf_counter()
        progress(f"reading {gguf_path.name} into an fp32 {genai.KIND_LABEL} (the reference)")
        self.info = gguf.inspect(gguf_path)
        self.source = genai.read(gguf_path, work)  # read once: the reference and gguf-native write from it
        genai.reference(self.source, gguf_path, work / "fp32", self.info)
        ref_recipe = LLMRecipe(
            name="fp32-reference",
            weights="fp32",
            runtime_config=dict(genai.REFERENCE_CONFIG),
        )
        self.reference = Candidate(ref_recipe, work / "fp32")
        gen = genai.open_generator(work / "fp32", threads=self.threads, config=ref_recipe.runtime_config)
        bos = self.info.bos_token_id if self.info.bos_token_id is not None and self.info.bos_token_id >= 0 else None
        # the calibration text, only where a data-aware recipe will use it (it imports the MiniLM example's text)
        self.calibration: list[list[int]] = []
        if calibrate:
            paragraphs, count = text.calibration_paragraphs(), measures.calibration_windows
            self.calibration = text.windows(paragraphs, gen.encode, count=count, length=measures.window_tokens, bos=bos)
        self.heldout = text.windows(
            text.heldout_paragraphs(),
            gen.encode,
            count=measures.heldout_windows,
            length=measures.window_tokens,
            bos=bos,
        )
        # one prompt per timed run and one for the warm-up, each another held-out window (no KV-cache reuse)
        self.prompts = [w[: measures.prompt_tokens] for w in self.heldout[: measures.runs + 1]]
        if len(self.prompts) < measures.runs + 1:
            raise ModelInvalid(
                f"the held-out text gave {len(self.prompts)} windows of {measures.window_tokens} "
                f"tokens; the speed runs need {measures.runs + 1}"
            )
        self._measure(self.reference, gen, time.perf_counter() - t0)

    def _measure(self, c: Candidate, gen: Any, build_s: float) -> None:
        import time

        t0 = time.perf_counter()
        c.size_bytes = _size(c.directory)
        c.perplexity = evaluate.perplexity(
            c.directory, self.heldout, threads=self.threads, config=c.recipe.runtime_config
        )
        c.speed = evaluate.speed(gen, self.prompts, new_tokens=self.m.new_tokens)
        c.seconds = build_s + time.perf_counter() - t0
        self.progress(
            f"{c.recipe.name}: perplexity {c.perplexity:.3f}, {c.speed.decode_tokens_per_s:.1f} tok/s, "
            f"first token {c.speed.ttft_ms:.0f} ms, {c.size_bytes / 2**20:.1f} MB"
        )

    def build(self, recipe: LLMRecipe) -> Candidate:
        import time

        t0 = time.perf_counter()
        directory = self.work / recipe.name
        self.progress(f"building {recipe.name} ({recipe.weights})")
        if recipe.weights == "fp32":
            directory = self.reference.directory
        elif recipe.weights == "gguf":
            genai.native_model(self.source, self.gguf, directory, self.info)
        else:
            genai.compress(self.reference.directory, directory, recipe, self.calibration)
        c = Candidate(recipe, directory, notes={"source_tensor_types": self.info.tensor_types})
        gen = genai.open_generator(directory, threads=self.threads, config=recipe.runtime_config)
        self._measure(c, gen, time.perf_counter() - t0)
        _gate(c, self.reference.perplexity, self.profile)
        return c


def run_llm_package(
    model: str,
    *,
    profile: str | DeviceProfile,
    recipe: Any = None,
    auto: bool = False,
    out: str | Path,
    sign: Signing | None = None,
    force: bool = False,
    measures: Measures | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> PackageResult:
    """Package a GGUF language model for ``profile`` into ``out`` (a directory, or FILE.edgepkg with ``sign``)."""
    prof = _profile(profile)
    recipes, strict = _recipes(recipe, auto)
    out = Path(out)
    package_file = out if out.suffix == ".edgepkg" else None
    if package_file is not None and sign is None:
        raise RecipeInvalid(f"--out {out} names a package file; give --key KEY to sign it (or --out a directory)")
    check_writable(out, force=force)
    if sign is not None:
        from edgekit.keys import load_signing_key

        load_signing_key(sign.key, passphrase=sign.passphrase)
    gguf_path = gguf.resolve(model)
    info = gguf.inspect(gguf_path)  # a file that is not a GGUF model fails here, before any work
    for r in recipes:
        _check_groups(r, info)
    name = model if model in gguf.EXAMPLES else gguf_path.stem
    with tempfile.TemporaryDirectory(prefix="edgekit-llm-") as tmp:
        calibrate = any(r.data_aware for r in recipes)
        lab = Lab(gguf_path, Path(tmp), prof, measures or Measures.from_env(), progress, calibrate=calibrate)
        ref = lab.reference
        built = [ref if r.weights == "fp32" else lab.build(r) for r in recipes]
        everyone = built if any(c is ref for c in built) else [ref, *built]
        if strict:
            best = built[0]
            if best.status != "ok":
                raise GateFailed(
                    f"recipe {best.recipe.name}: {best.reason}; raise perplexity_tolerance in the "
                    "recipe, or choose gentler weights (int8_asym, or int4 with a smaller group_size)"
                )
        else:
            best = choose(everyone, ref)
            if best is None:
                table = "; ".join(f"{c.recipe.name}: {c.status} {c.reason}" for c in everyone)
                raise NoCandidate(f"no candidate for {prof.name!r} stays within tolerance and size: {table}")
        result, report = package_result(lab, best, everyone, strict=strict, name=name, out=out)
        sealed = seal(lab, best, report, out, sign=sign, package_file=package_file)
        if package_file is not None:
            result.output_dir = None
        result.package_path = str(sealed.resolve()) if sealed is not None else None
        return result


def _stage(stage: Path, directory: Path, gen: Any) -> dict[str, Any]:
    """The model directory as LLMPipeline reads it, and the greedy sample the device's smoke test repeats."""
    import numpy as np
    from edgekit_agent.runtimes.genai import FILES

    from edgekit.build import _npy

    for name in FILES:
        shutil.copyfile(directory / name, stage / name)
    prompt = gen.encode(SAMPLE_PROMPT)
    tokens = evaluate.greedy(gen, prompt, SAMPLE_TOKENS)
    (stage / "sample").mkdir()
    (stage / "sample/prompt_ids.npy").write_bytes(_npy(np.asarray(prompt, dtype=np.int64)))
    (stage / "sample/tokens.npy").write_bytes(_npy(np.asarray(tokens, dtype=np.int64)))
    (stage / "sample/prompt.json").write_text(json.dumps({"prompt": SAMPLE_PROMPT, "text": gen.decode(tokens)}) + "\n")
    return {
        "model": {"format": genai.RUNTIME.model_format, "entry": genai.MODEL_XML},
        "files": sorted([*FILES, "sample/prompt_ids.npy", "sample/tokens.npy", "sample/prompt.json"]),
        "inputs": [{"name": "prompt_ids", "dtype": "int64", "shape": [None]}],
        "outputs": [{"name": "tokens", "dtype": "int64", "shape": [None]}],
        "sample": {
            "inputs": [{"name": "prompt_ids", "file": "sample/prompt_ids.npy"}],
            "outputs": [{"name": "tokens", "file": "sample/tokens.npy"}],
            "rtol": SAMPLE_RTOL,
            "atol": 0.0,
        },
        "preprocessing": {"kind": "text-generation", "chat_template": True},
        "postprocessing": {},
    }


def package_result(
    lab: Lab, best: Candidate, everyone: list[Candidate], *, strict: bool, name: str, out: Path
) -> tuple[PackageResult, dict[str, Any]]:
    """The step table (reference, then the chosen compression) and report.json of ``best``."""
    ref, params = lab.reference, lab.info.params
    steps = [_step(f"gguf -> {genai.KIND_LABEL} fp32 (reference)", ref, ref, params, gate="pass", kind=ENGINE)]
    if best is not ref:
        gate = "pass" if best.status == "ok" else "fail"
        steps.append(_step(f"{best.recipe.name} ({best.recipe.weights})", best, ref, params, gate=gate, kind=ENGINE))
    result = PackageResult(
        model=name,
        profile=lab.profile.name,
        runtime=f"{ENGINE}:{CPU}",
        precision=best.recipe.precision,
        output_dir=str(out.resolve()),
        steps=steps,
        chosen=best.recipe.name,
        plan=[s.name for s in steps],
        threads=lab.threads,
        candidates=None if strict else [c.row(ref.perplexity) for c in everyone],
        description=f"{lab.info.name} ({lab.info.arch}, {params:,} parameters, GGUF {lab.info.tensor_types})",
        latency_measured_on=f"host:{ENGINE}",
    )
    report = result.to_json()
    report["runtime_config"] = best.recipe.runtime_config
    report["llm"] = {
        "reference_perplexity": ref.perplexity,
        "heldout_tokens": sum(map(len, lab.heldout)),
        "heldout_windows": len(lab.heldout),
        "prompt_tokens": len(lab.prompts[-1]),
        "new_tokens": lab.m.new_tokens,
        "recipe": best.recipe.model_dump(),
    }
    return result, report


def seal(
    lab: Lab, best: Candidate, report: dict[str, Any], out: Path, *, sign: Signing | None, package_file: Path | None
) -> Path | None:
    """Write ``best`` with its sample into ``out`` (and a signed .edgepkg with ``sign``)."""
    gen = genai.open_generator(best.directory, threads=lab.threads, config=best.recipe.runtime_config)
    return write_output(
        out, report, lambda stage: _stage(stage, best.directory, gen), signing=sign, package_file=package_file
    )
