"""Knowledge distillation: train the recipe's student on the current model's soft outputs and the labels.

loss = alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * task loss. The student replaces the
teacher for every later pass.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassNotApplicable
from edgekit.passes import _training
from edgekit.passes.base import Pass, PassConfig, PassContext


class DistillConfig(PassConfig):
    type: Literal["distill"] = "distill"
    student: str = Field(description="module:function returning an untrained nn.Module with the teacher's interface")
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
    epochs: int = Field(default=15, gt=0)
    lr: float = Field(default=3e-3, gt=0)


def _build_student(cfg: DistillConfig) -> Any:
    module_name, _, func = cfg.student.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), func)
    except (ImportError, AttributeError, ValueError):
        raise PassNotApplicable(
            f"distill: cannot import student {cfg.student!r}; use 'package.module:function'"
        ) from None
    return factory(**cfg.student_kwargs)


class Distill(Pass):
    Config = DistillConfig
    accepts = ("torch",)

    def check(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> None:
        if bundle.train_batches is None:
            raise PassNotApplicable(f"distill needs training data and {bundle.name!r} has none")
        import torch

        cfg: DistillConfig = self.config  # type: ignore[assignment]
        student = _build_student(cfg)
        example = [torch.from_numpy(np.ascontiguousarray(v)) for v in bundle.example.values()]
        with torch.no_grad():
            try:
                s_out, t_out = student.eval()(*example), artifact.module(*example)
            except Exception as exc:
                raise PassNotApplicable(
                    f"distill: student {cfg.student!r} does not accept the model's inputs: {exc}"
                ) from None
        if s_out.shape != t_out.shape:
            raise PassNotApplicable(
                f"distill: student output shape {tuple(s_out.shape)} differs from the teacher's {tuple(t_out.shape)}"
            )

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        cfg: DistillConfig = self.config  # type: ignore[assignment]
        teacher = artifact.module.eval()
        student = _training.train(
            _build_student(cfg),
            bundle,
            epochs=cfg.epochs,
            lr=cfg.lr,
            teacher=teacher,
            temperature=cfg.temperature,
            alpha=cfg.alpha,
        )
        return artifact.evolve(module=student, notes={"student": cfg.student, "alpha": cfg.alpha, "T": cfg.temperature})
