"""Low-rank factorisation: a Linear (or 1x1 Conv) W ~ U_r S_r V_r becomes two thinner layers.

A layer is only replaced when the factorised form has fewer parameters; the rank is chosen per layer
from a rank ratio or from the fraction of singular-value energy to keep.
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field, model_validator

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassNotApplicable
from edgekit.passes import _training
from edgekit.passes.base import Pass, PassConfig, PassContext


class LowRankConfig(PassConfig):
    type: Literal["lowrank"] = "lowrank"
    rank_ratio: float | None = Field(default=None, gt=0, le=1)
    energy: float | None = Field(default=None, gt=0, le=1)
    min_features: int = Field(default=64, gt=0, description="skip layers smaller than this on either side")
    finetune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0)

    @model_validator(mode="after")
    def _one_criterion(self) -> LowRankConfig:
        if (self.rank_ratio is None) == (self.energy is None):
            raise ValueError("set exactly one of rank_ratio or energy")
        return self


def _rank(s, cfg: LowRankConfig) -> int:
    if cfg.rank_ratio is not None:
        return max(1, round(cfg.rank_ratio * len(s)))
    energy = (s**2).cumsum(0) / (s**2).sum()
    return int((energy < cfg.energy).sum().item()) + 1


class LowRank(Pass):
    Config = LowRankConfig
    accepts = ("torch",)

    def _candidates(self, module):
        from torch import nn

        cfg: LowRankConfig = self.config  # type: ignore[assignment]
        out = []
        for name, m in module.named_modules():
            if isinstance(m, nn.Linear):
                o, i = m.weight.shape
            elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
                o, i = m.weight.shape[:2]
            else:
                continue
            if min(o, i) >= cfg.min_features:
                out.append((name, m))
        return out

    def check(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> None:
        if not self._candidates(artifact.module):
            raise PassNotApplicable(
                f"lowrank found no Linear or 1x1 Conv layer with >= {self.config.min_features} "
                f"features in {bundle.name!r}"
            )

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        import torch
        from torch import nn

        cfg: LowRankConfig = self.config  # type: ignore[assignment]
        module = copy.deepcopy(artifact.module)
        ranks: dict[str, str] = {}
        with torch.no_grad():
            for name, layer in self._candidates(module):
                conv = isinstance(layer, nn.Conv2d)
                w = layer.weight.reshape(layer.weight.shape[0], -1) if conv else layer.weight
                o, i = w.shape
                u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
                r = _rank(s, cfg)
                if r * (o + i) >= o * i:
                    ranks[name] = "kept (no saving)"
                    continue
                root = s[:r].sqrt()
                first_w, second_w = root[:, None] * vh[:r], u[:, :r] * root[None, :]
                has_bias = layer.bias is not None
                if conv:
                    first, second = nn.Conv2d(i, r, 1, bias=False), nn.Conv2d(r, o, 1, bias=has_bias)
                    first.weight.copy_(first_w[:, :, None, None])
                    second.weight.copy_(second_w[:, :, None, None])
                else:
                    first, second = nn.Linear(i, r, bias=False), nn.Linear(r, o, bias=has_bias)
                    first.weight.copy_(first_w)
                    second.weight.copy_(second_w)
                if has_bias:
                    second.bias.copy_(layer.bias)
                parent_name, _, child = name.rpartition(".")
                parent = module.get_submodule(parent_name) if parent_name else module
                setattr(parent, child, nn.Sequential(first, second))
                ranks[name] = f"{r}/{min(o, i)}"
        if all(v.startswith("kept") for v in ranks.values()):
            raise PassNotApplicable("lowrank: no layer gets smaller at this rank; lower rank_ratio or energy")
        if cfg.finetune_epochs:
            _training.train(module, bundle, epochs=cfg.finetune_epochs, lr=cfg.lr)
        return artifact.evolve(module=module.eval(), notes={"ranks": ranks})
