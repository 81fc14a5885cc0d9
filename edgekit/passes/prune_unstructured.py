"""L1-magnitude unstructured pruning. Honest about what it buys: fewer non-zero weights and a smaller
compressed size, but dense runtimes run the same number of MACs, so latency does not improve."""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassNotApplicable
from edgekit.evaluate import compressed_size_bytes
from edgekit.passes.base import Pass, PassConfig, PassContext


class PruneUnstructuredConfig(PassConfig):
    type: Literal["prune_unstructured"] = "prune_unstructured"
    sparsity: float = Field(gt=0, lt=1)
    scope: Literal["global", "layer"] = "global"
    layer_types: list[Literal["Linear", "Conv2d", "Conv1d", "Embedding"]] = Field(default=["Linear", "Conv2d"])


class PruneUnstructured(Pass):
    Config = PruneUnstructuredConfig
    accepts = ("torch",)

    def _targets(self, module):
        from torch import nn

        cfg: PruneUnstructuredConfig = self.config  # type: ignore[assignment]
        types = tuple(getattr(nn, t) for t in cfg.layer_types)
        return [(m, "weight") for m in module.modules() if isinstance(m, types)]

    def check(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> None:
        if not self._targets(artifact.module):
            raise PassNotApplicable(f"prune_unstructured found no {self.config.layer_types} layers in {bundle.name!r}")

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        import torch
        from torch.nn.utils import prune

        cfg: PruneUnstructuredConfig = self.config  # type: ignore[assignment]
        module = copy.deepcopy(artifact.module)
        targets = self._targets(module)
        if cfg.scope == "global":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=cfg.sparsity)
        else:
            for mod, name in targets:
                prune.l1_unstructured(mod, name, amount=cfg.sparsity)
        for mod, name in targets:
            prune.remove(mod, name)
        total = sum(m.weight.numel() for m, _ in targets)
        zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
        with torch.no_grad():
            compressed = compressed_size_bytes(module)
        return artifact.evolve(
            module=module.eval(),
            notes={
                "sparsity": round(zeros / total, 4),
                "compressed_size_bytes": compressed,
                "speedup_note": "dense kernels: no latency gain expected; the gain is compressed size",
            },
        )
