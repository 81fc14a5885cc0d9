"""Structured channel/neuron pruning that physically removes channels and fixes every dependent layer.

Dependency tracking (Conv -> BatchNorm -> next Conv, Flatten -> Linear, residual and concat groups)
is done by torch-pruning's DepGraph rather than by hand: it is the maintained tool for exactly this.
The output layer keeps its width so the model's interface is unchanged.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
from pydantic import Field

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassFailed, PassNotApplicable, first_line
from edgekit.passes import _training
from edgekit.passes.base import Pass, PassConfig, PassContext


class PruneStructuredConfig(PassConfig):
    type: Literal["prune_structured"] = "prune_structured"
    ratio: float = Field(gt=0, lt=1, description="fraction of channels/neurons removed per prunable layer")
    norm: Literal["l1", "l2"] = "l2"
    finetune_epochs: int = Field(default=3, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    round_to: int | None = Field(default=None, gt=0)


class PruneStructured(Pass):
    Config = PruneStructuredConfig
    accepts = ("torch",)

    def check(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> None:
        if bundle.model_type == "transformer":
            raise PassNotApplicable(
                f"prune_structured does not prune attention heads of transformer {bundle.name!r}; "
                "use lowrank, quantize_openvino or quantize_ort for it"
            )
        if self.config.finetune_epochs and bundle.train_batches is None:
            raise PassNotApplicable(
                f"prune_structured fine-tuning needs training data, which {bundle.name!r} lacks; set finetune_epochs: 0"
            )

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        import torch
        import torch_pruning as tp
        from torch import nn

        cfg: PruneStructuredConfig = self.config  # type: ignore[assignment]
        module = copy.deepcopy(artifact.module).eval()
        example = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in bundle.example.values())
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        # Keep the interface: the last layer's outputs, and embedding tables whose width ties to interactions.
        ignored = [m for m in module.modules() if isinstance(m, nn.Embedding)] + linears[-1:]
        before = sum(p.numel() for p in module.parameters())
        try:
            pruner = tp.pruner.MagnitudePruner(
                module,
                example,
                importance=tp.importance.MagnitudeImportance(p=1 if cfg.norm == "l1" else 2),
                pruning_ratio=cfg.ratio,
                ignored_layers=ignored,
                round_to=cfg.round_to,
            )
            pruner.step()
            with torch.no_grad():
                module(*example)
        except Exception as exc:
            first = first_line(exc, 300)
            raise PassFailed(f"structured pruning could not trace {bundle.name!r}: {first}") from None
        after = sum(p.numel() for p in module.parameters())
        if after >= before:
            raise PassNotApplicable(f"prune_structured found no prunable channels in {bundle.name!r}")
        if cfg.finetune_epochs:
            _training.train(module, bundle, epochs=cfg.finetune_epochs, lr=cfg.lr)
        shapes = {
            name: list(m.weight.shape)
            for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear | nn.Conv1d)
        }
        return artifact.evolve(
            module=module.eval(), notes={"ratio": cfg.ratio, "finetune_epochs": cfg.finetune_epochs, "shapes": shapes}
        )
