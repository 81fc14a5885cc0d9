"""The contract every pass fulfils; the pipeline knows only this, never a specific pass."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.artifact import Artifact, Kind
from edgekit.bundle import ModelBundle
from edgekit.profiles import DeviceProfile


class PassConfig(BaseModel):
    """Options shared by every pass; each pass subclasses this with its own typed knobs."""

    model_config = ConfigDict(extra="forbid")
    type: str
    on_fail: Literal["fail", "skip"] = "fail"
    tolerance: float | None = Field(default=None, gt=0, lt=1, description="overrides recipe/profile tolerance")


@dataclass
class PassContext:
    profile: DeviceProfile
    workdir: Path
    threads: int
    static_shapes: bool
    cache: dict[Any, Any] = field(default_factory=dict)

    def step_dir(self, name: str) -> Path:
        index = len([p for p in self.workdir.iterdir() if p.is_dir()]) if self.workdir.exists() else 0
        path = self.workdir / f"{index:02d}-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path


class Pass:
    """One compression or conversion step. ``accepts``/``produces`` let the planner insert conversions.

    Its name is its Config's ``type`` (what a recipe writes), said once there.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]]
    accepts: ClassVar[tuple[Kind, ...]]
    produces: ClassVar[Kind | None] = None  # None: same kind as the input
    runtime: ClassVar[str | None] = None  # a pass tied to one runtime (e.g. NNCF -> openvino)
    # The precision of what the pass writes (None: its input's). ``--auto`` offers a candidate only when the
    # profile lists every precision its passes declare, and a profile may list only declared precisions.
    precision: ClassVar[str | None] = None
    # How far the device's smoke test may stray from the host's output on the packaged sample (relative):
    # lower precisions' kernels differ more between CPUs (x86 vs ARM). None: its input's.
    smoke_rtol: ClassVar[float | None] = None
    # A conversion or precision change: the weights and operations stay what they were, so its step carries
    # its input's parameter and MAC counts. Counted again in the new format they moved without any compression
    # (export folds batch norms: "param red. 0.1 %"; INT8 rounds small weights to zero: "1.1 %").
    keeps_weights: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.Config.model_fields["type"].default
        if "run" in cls.__dict__:  # what run returns carries the declarations, whoever calls it
            run = cls.run

            @functools.wraps(run)
            def declaring(self: Pass, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
                return self.declared(run(self, bundle, artifact, ctx))

            cls.run = declaring  # type: ignore[method-assign]

    def declared(self, artifact: Artifact) -> Artifact:
        """``artifact`` as this pass declares its output: its precision, and the looser smoke-test tolerance."""
        return artifact.evolve(precision=self.precision or artifact.precision,
                               smoke_rtol=max(artifact.smoke_rtol, self.smoke_rtol or 0.0))  # fmt: skip

    def __init__(self, config: PassConfig) -> None:
        self.config = config

    def output_kind(self, kind: Kind) -> Kind:
        return self.produces or kind

    def check(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> None:
        """Raise PassNotApplicable before any work when the pass cannot apply to this model."""

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        raise NotImplementedError
