"""Device profiles: what a target board can run, loaded from ``devices/*.yaml`` and validated strictly.

A profile is the contract between the packager and the device: which runtimes to prefer, which
precisions pay off, whether shapes must be static, how much accuracy may be traded. Unknown keys are
errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from edgekit_agent.runtimes import REGISTRY as RUNTIME_REGISTRY
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from edgekit.errors import ProfileInvalid, ProfileNotFound, describe_validation, load_yaml

RUNTIMES = set(RUNTIME_REGISTRY)
_RUNTIME_RE = re.compile(rf"^({'|'.join(map(re.escape, RUNTIME_REGISTRY))}):[A-Za-z0-9_.]+$")
# ISA flags that decide whether INT8/FP16/BF16 kernels are fast; probe keeps only these from /proc/cpuinfo.
INT8_RELEVANT_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx512_fp16", "neon", "asimd", "asimddp", "dotprod",
    "i8mm", "bf16", "fphp", "asimdhp", "sve", "sve2",
)  # fmt: skip


class PowerModel(BaseModel):
    """Linear power model used only when no sensor exists; results from it are labelled estimates."""

    model_config = ConfigDict(extra="forbid")
    idle_w: float = Field(gt=0)
    max_w: float = Field(gt=0)

    @model_validator(mode="after")
    def _max_above_idle(self) -> PowerModel:
        if self.max_w < self.idle_w:
            raise ValueError("max_w must be >= idle_w")
        return self


class DeviceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    arch: Literal["x86_64", "aarch64", "armv7l"]
    cpu: str
    cores: int = Field(gt=0)
    memory_mb: int = Field(gt=0)
    isa_features: list[str] = Field(default_factory=list)
    runtimes: list[str] = Field(min_length=1, description="runtime:device in order of preference")
    # which precisions pay off here; each one a pass declares (Pass.precision) or a runtime runs by itself
    # (edgekit.auto.check_precisions says which are known when a model is packaged for the profile)
    precisions: list[Annotated[str, StringConstraints(pattern=r"^[a-z]+[0-9]+$")]] = Field(min_length=1)
    static_shapes: bool = False
    max_model_mb: float = Field(gt=0)
    accuracy_tolerance: float = Field(gt=0, lt=1, description="max relative performance drop vs the baseline")
    latency_budget_ms: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, gt=0)
    power: PowerModel
    power_sensor: Literal["rapl", "hwmon", "ina3221", "rpi5_pmic", "none"]
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("runtimes")
    @classmethod
    def _runtime_format(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _RUNTIME_RE.match(item):
                examples = " or ".join(f"'{r.name}:{r.cpu}'" for r in RUNTIME_REGISTRY.values())
                raise ValueError(f"runtime {item!r} must look like {examples}")
        return value

    @property
    def num_threads(self) -> int:
        return self.threads or self.cores

    def runtime_order(self) -> list[tuple[str, str]]:
        return [tuple(r.split(":", 1)) for r in self.runtimes]  # type: ignore[misc]

    def preferred_runtime(self, available: set[str] | None = None) -> str:
        """First runtime in preference order that the host can convert for (both are always installed here)."""
        for runtime, _device in self.runtime_order():
            if available is None or runtime in available:
                return runtime
        return self.runtime_order()[0][0]

    def supports(self, runtime: str) -> bool:
        return any(r == runtime for r, _ in self.runtime_order())


def profiles_dir() -> Path:
    """``$EDGEKIT_PROFILES_DIR`` or the repository's ``devices/`` folder."""
    env = os.environ.get("EDGEKIT_PROFILES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "devices"


def load_profile_file(path: Path) -> DeviceProfile:
    data = load_yaml(path, ProfileInvalid, "profile")
    if not isinstance(data, dict):
        raise ProfileInvalid(f"{path}: a profile must be a YAML mapping of keys to values")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileInvalid(f"{path}: {describe_validation(exc)}") from None


def list_profiles() -> list[DeviceProfile]:
    return [load_profile_file(p) for p in sorted(profiles_dir().glob("*.yaml"))]


def known_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str) -> DeviceProfile:
    """A profile by name (``rpi4``) or by path to a YAML file (``./my-board.yaml``)."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} and candidate.exists():
        return load_profile_file(candidate)
    path = profiles_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(known_names()) or "none found"
        raise ProfileNotFound(
            f"no device profile {name_or_path!r} (known: {known}); "
            "run 'edgekit profiles probe --out my-board.yaml' to create one"
        )
    return load_profile_file(path)


def cpu_flags() -> set[str]:
    """This CPU's feature flags (x86 ``flags`` or arm ``Features`` of /proc/cpuinfo); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            flags.update(value.split())
    return flags


# The flags that flip INT8 speed (fp32 vs INT8 ranks differently with and without them): every benchmark names them.
INT8_SPEED_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def int8_speed_flags(flags: set[str] | None = None) -> list[str]:
    """The INT8-deciding flags this CPU has, in a fixed order (``[]`` on a CPU with none of them)."""
    have = cpu_flags() if flags is None else flags
    return [f for f in INT8_SPEED_FLAGS if f in have]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"model name", "Model", "Hardware"}:
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe(*, name: str | None = None) -> DeviceProfile:
    """Measure this machine and describe it as a profile a user can edit, instead of guessing."""
    import psutil

    arch = platform.machine()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch.lower(), arch)
    # each installed runtime with the devices it finds; the ones preferred on this architecture first (OpenVINO
    # on x86, whose CPU plugin is the faster INT8 path there; ONNX Runtime on ARM)
    order = sorted(RUNTIME_REGISTRY.values(), key=lambda r: arch not in r.preferred_on)
    runtimes: list[str] = []
    for rt in order:
        with contextlib.suppress(Exception):  # a runtime that is installed but broken is left out, not fatal
            runtimes += [f"{rt.name}:{d}" for d in rt.devices()] if rt.installed() else []
    flags = cpu_flags()
    isa = sorted(f for f in flags if f in INT8_RELEVANT_FLAGS)
    precisions = ["fp32", "int8"]
    if {"avx512_fp16", "fphp", "asimdhp"} & flags or any(r.endswith((":GPU", ":NPU")) for r in runtimes):
        precisions.append("fp16")
    if {"avx512_bf16", "amx_bf16", "bf16"} & flags:
        precisions.append("bf16")
    cores = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    mem_mb = int(psutil.virtual_memory().total / 2**20)
    static = {f"{r.name}:{d}" for r in RUNTIME_REGISTRY.values() for d in r.static_shape_devices}
    has_npu = any(r in static for r in runtimes)
    fallback = next(iter(RUNTIME_REGISTRY.values()))
    return DeviceProfile(
        name=name or re.sub(r"[^a-z0-9._-]+", "-", platform.node().lower()).strip("-") or "this-machine",
        description=f"probed on {platform.node()} ({platform.platform()})",
        arch=arch if arch in {"x86_64", "aarch64", "armv7l"} else "x86_64",
        cpu=cpu_name(),
        cores=cores,
        memory_mb=mem_mb,
        isa_features=isa,
        runtimes=runtimes or [f"{fallback.name}:{fallback.cpu}"],
        precisions=precisions,
        static_shapes=has_npu,
        max_model_mb=max(16.0, round(mem_mb / 8, 1)),
        accuracy_tolerance=0.01,
        threads=cores,
        power=PowerModel(idle_w=10.0, max_w=10.0 + 8.0 * cores),
        power_sensor="rapl" if Path("/sys/class/powercap/intel-rapl:0/energy_uj").exists() else "none",
    )


def profile_to_yaml(profile: DeviceProfile) -> str:
    return yaml.safe_dump(profile.model_dump(mode="json", exclude_none=True), sort_keys=False)
