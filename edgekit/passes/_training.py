"""Fine-tuning shared by the passes that change weights in torch (structured pruning, low-rank, distillation)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.bundle import ModelBundle
from edgekit.errors import PassNotApplicable


def task_loss(task: str, outputs: Any, target: Any) -> Any:
    import torch.nn.functional as F

    if task == "classification":
        return F.cross_entropy(outputs, target)
    if task == "ranking":
        return F.binary_cross_entropy_with_logits(outputs, target.float())
    raise PassNotApplicable(f"no training loss for task {task!r}; set finetune_epochs: 0 or use distillation")


def soft_loss(task: str, student: Any, teacher: Any, temperature: float) -> Any:
    import torch
    import torch.nn.functional as F

    t = temperature
    if task == "classification":
        return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    if task == "ranking":
        return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def train(
    module: Any,
    bundle: ModelBundle,
    *,
    epochs: int,
    lr: float,
    teacher: Any = None,
    temperature: float = 4.0,
    alpha: float = 0.0,
) -> Any:
    """Train ``module`` on the bundle's data; with a teacher, mix soft (alpha) and hard (1 - alpha) losses."""
    import torch

    if bundle.train_batches is None:
        raise PassNotApplicable(
            f"model {bundle.name!r} has no training data; fine-tuning and distillation need a model "
            "loaded with a dataset (set finetune_epochs: 0 to prune without fine-tuning)"
        )
    torch.manual_seed(0)
    opt = torch.optim.AdamW(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    module.train()
    for _ in range(epochs):
        for feed, target in bundle.train_batches():
            inputs = [torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()]
            out = module(*inputs)
            loss = 0.0
            if alpha < 1.0:
                loss = (1 - alpha) * task_loss(bundle.task, out, torch.from_numpy(target))
            if teacher is not None and alpha > 0:
                with torch.no_grad():
                    t_out = teacher(*inputs)
                loss = loss + alpha * soft_loss(bundle.task, out, t_out, temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return module.eval()
