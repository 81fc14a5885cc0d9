"""Structured pruning of BERT-style encoders: whole attention heads and FFN intermediate neurons, removed
physically (smaller Linear layers, fewer heads), then recovered by distillation from the unpruned model.

Importance, measured on the bundle's calibration text (unlabelled, so no task loss and no gradients): a
head's score is the magnitude of what it adds to the attention output projection (the norm of
``context_h @ W_o[:, h]^T`` per token, averaged over real tokens); an FFN neuron's is its mean absolute
activation times the norm of its output weight column. Both measure what the unit contributes to the residual
stream, which is what is lost when it is removed. The lowest-scoring units of each layer go; at least one
head stays, and the FFN width stays a multiple of ``multiple`` (INT8 GEMM kernels work in 16/32/64 blocks).

Recovery (``distill_steps``): the pruned student learns the teacher's outputs and each layer's hidden states
(MSE) on the same calibration text, which is disjoint from the evaluation sentences. The hidden size is never
pruned, so the layers line up one to one.

The layout it knows: modules with ``query``/``key``/``value`` Linear layers and ``attention_head_size``
(BertSelfAttention and its relatives: BERT, RoBERTa, MiniLM, ELECTRA), their layer's ``attention.output.dense``,
``intermediate.dense`` and ``output.dense``. Anything else is refused in one line.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgekit.artifact import Artifact
from edgekit.bundle import ModelBundle
from edgekit.errors import PassNotApplicable
from edgekit.passes.base import Pass, PassConfig, PassContext


class PruneTransformerConfig(PassConfig):
    type: Literal["prune_transformer"] = "prune_transformer"
    heads: float = Field(default=0.0, ge=0, lt=1, description="fraction of attention heads removed per layer")
    ffn: float = Field(default=0.0, ge=0, lt=1, description="fraction of FFN intermediate neurons removed per layer")
    multiple: int = Field(default=16, gt=0, description="FFN widths stay a multiple of this")
    distill_steps: int = Field(default=0, ge=0, description="recovery steps on the calibration text (0: none)")
    distill_batch: int = Field(default=16, gt=0, description="calibration samples per recovery step")
    lr: float = Field(default=5e-5, gt=0)


def encoder_layers(module: Any) -> list[Any]:
    """The BERT-style layers of ``module``: each has attention.self (query/key/value), attention.output.dense,
    intermediate.dense and output.dense."""
    layers = []
    for m in module.modules():
        att = getattr(m, "attention", None)
        own = getattr(att, "self", None)
        if own is None or not all(hasattr(own, n) for n in ("query", "key", "value", "attention_head_size")):
            continue
        if hasattr(getattr(att, "output", None), "dense") and hasattr(getattr(m, "intermediate", None), "dense") \
                and hasattr(getattr(m, "output", None), "dense"):  # fmt: skip
            layers.append(m)
    return layers


class PruneTransformer(Pass):
    Config = PruneTransformerConfig
    accepts = ("torch",)

    def check(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> None:
        cfg: PruneTransformerConfig = self.config  # type: ignore[assignment]
        if not cfg.heads and not cfg.ffn:
            raise PassNotApplicable("prune_transformer: set heads and/or ffn (fractions to remove, e.g. 0.25)")
        if artifact.module is None or not encoder_layers(artifact.module):
            raise PassNotApplicable(
                f"prune_transformer finds no BERT-style encoder layer in {bundle.name!r} (attention.self.query/key/"
                "value, intermediate.dense, output.dense); use quantize_ort or quantize_openvino for it"
            )
        if not bundle.calibration:
            raise PassNotApplicable(f"prune_transformer scores units on calibration data, which {bundle.name!r} lacks")

    def run(self, bundle: ModelBundle, artifact: Artifact, ctx: PassContext) -> Artifact:
        import torch

        cfg: PruneTransformerConfig = self.config  # type: ignore[assignment]
        teacher = artifact.module.eval()
        student = copy.deepcopy(teacher).eval()
        layers = encoder_layers(student)
        feeds = [_tensors(f) for f in bundle.calibration]
        heads, neurons = _importance(student, layers, feeds, bundle)
        shapes = []
        with torch.no_grad():
            for i, layer in enumerate(layers):
                keep_heads = _keep(heads[i], max(1, len(heads[i]) - round(len(heads[i]) * cfg.heads)))
                width = len(neurons[i])
                target = min(width, max(cfg.multiple, math.ceil(width * (1 - cfg.ffn) / cfg.multiple) * cfg.multiple))
                keep_ffn = _keep(neurons[i], target)
                _prune_heads(layer, keep_heads)
                _prune_ffn(layer, keep_ffn)
                shapes.append({"heads": len(keep_heads), "ffn": len(keep_ffn)})
        if cfg.distill_steps:
            _distill(student, teacher, layers, encoder_layers(teacher), _batched(feeds, cfg.distill_batch),
                     steps=cfg.distill_steps, lr=cfg.lr)  # fmt: skip
        notes = {
            "heads": cfg.heads,
            "ffn": cfg.ffn,
            "layers": shapes,
            "distill_steps": cfg.distill_steps,
            "importance": "contribution magnitude on the calibration text",
        }
        return artifact.evolve(module=student.eval(), notes=notes)


def _tensors(feed: dict[str, np.ndarray]) -> list[Any]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()]


def _batched(feeds: list[list[Any]], size: int) -> list[list[Any]]:
    """Consecutive calibration samples stacked along the sample axis, ``size`` at a time (one at a time when
    their shapes differ, e.g. unpadded text of varying length)."""
    import torch

    if len({tuple(tuple(t.shape[1:]) for t in feed) for feed in feeds}) > 1:
        size = 1
    groups = [feeds[i : i + size] for i in range(0, len(feeds), size)]
    return [[torch.cat(parts, dim=0) for parts in zip(*group, strict=True)] for group in groups]


def _token_mask(feed: list[Any], bundle: ModelBundle) -> Any:
    """Real tokens (1) vs padding (0) where the model takes an attention mask; None otherwise."""
    names = list(bundle.input_names)
    return feed[names.index("attention_mask")].float() if "attention_mask" in names else None


def _importance(module: Any, layers: list[Any], feeds: list[list[Any]], bundle: ModelBundle) -> tuple[list, list]:
    import torch

    heads = [torch.zeros(layer.attention.self.query.out_features // layer.attention.self.attention_head_size)
             for layer in layers]  # fmt: skip
    neurons = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    state: dict[str, Any] = {}

    def on_attention_output(i: int) -> Any:
        def hook(mod: Any, args: tuple) -> None:
            x, d = args[0], layers[i].attention.self.attention_head_size
            w = mod.weight  # [hidden, heads * d]
            per_head = [(x[..., h * d:(h + 1) * d] @ w[:, h * d:(h + 1) * d].T).norm(dim=-1)
                        for h in range(heads[i].numel())]  # fmt: skip
            heads[i] += torch.stack([_mean(p, state["mask"]) for p in per_head])

        return hook

    def on_ffn_output(i: int) -> Any:
        def hook(mod: Any, args: tuple) -> None:
            a = args[0].abs()  # [batch, tokens, width]: the activation each neuron passes on
            weights = mod.weight.norm(dim=0)  # [width]
            mask = state["mask"]
            mean = a.mean(dim=tuple(range(a.dim() - 1))) if mask is None else \
                (a * mask.unsqueeze(-1)).sum(dim=(0, 1)) / mask.sum().clamp(min=1)  # fmt: skip
            neurons[i] += mean * weights

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(on_attention_output(i)))
        handles.append(layer.output.dense.register_forward_pre_hook(on_ffn_output(i)))
    try:
        with torch.no_grad():
            for feed in feeds:
                state["mask"] = _token_mask(feed, bundle)
                module(*feed)
    finally:
        for h in handles:
            h.remove()
    return heads, neurons


def _mean(per_token: Any, mask: Any) -> Any:
    if mask is None or per_token.shape[:2] != mask.shape:
        return per_token.mean()
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _keep(scores: Any, count: int) -> list[int]:
    """The ``count`` highest-scoring units, in their original order."""
    return sorted(int(i) for i in scores.argsort(descending=True)[:count])


def _rows(linear: Any, index: list[int], dim: int) -> Any:
    """A copy of ``linear`` keeping ``index`` along its output (0) or input (1) features."""
    import torch
    from torch import nn

    idx = torch.tensor(index, dtype=torch.long)
    weight = linear.weight.index_select(dim, idx).clone()
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.index_select(0, idx) if dim == 0 else linear.bias)
    return new


def _prune_heads(layer: Any, keep: list[int]) -> None:
    own, d = layer.attention.self, layer.attention.self.attention_head_size
    cols = [h * d + j for h in keep for j in range(d)]
    own.query, own.key, own.value = (_rows(getattr(own, n), cols, 0) for n in ("query", "key", "value"))
    layer.attention.output.dense = _rows(layer.attention.output.dense, cols, 1)
    own.num_attention_heads, own.all_head_size = len(keep), len(keep) * d  # the forward reshapes with -1 heads


def _prune_ffn(layer: Any, keep: list[int]) -> None:
    layer.intermediate.dense = _rows(layer.intermediate.dense, keep, 0)
    layer.output.dense = _rows(layer.output.dense, keep, 1)


def _distill(student: Any, teacher: Any, s_layers: list[Any], t_layers: list[Any], feeds: list[list[Any]], *,
             steps: int, lr: float) -> None:  # fmt: skip
    """MSE to the teacher's outputs and to each layer's hidden states (same hidden size, layer for layer)."""
    import torch

    def capture(store: list[Any]) -> Any:
        def hook(_mod: Any, _args: tuple, out: Any) -> None:
            store.append(out[0] if isinstance(out, tuple) else out)

        return hook

    s_hidden: list[Any] = []
    t_hidden: list[Any] = []
    handles = [m.register_forward_hook(capture(s_hidden)) for m in s_layers]
    handles += [m.register_forward_hook(capture(t_hidden)) for m in t_layers]
    optimiser = torch.optim.AdamW(student.parameters(), lr=lr)
    # the student is fitted to the teacher, not regularised for a task: dropout would only add noise to a few
    # hundred steps on a small calibration set, so the student stays in eval mode (gradients flow regardless)
    student.eval()
    try:
        for step in range(steps):
            feed = feeds[step % len(feeds)]
            s_hidden.clear()
            t_hidden.clear()
            with torch.no_grad():
                target = teacher(*feed)
            out = student(*feed)
            loss = torch.nn.functional.mse_loss(out, target)
            loss = loss + sum(torch.nn.functional.mse_loss(s, t) for s, t in zip(s_hidden, t_hidden, strict=True)) \
                / max(len(s_hidden), 1)  # fmt: skip
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        for h in handles:
            h.remove()
        student.eval()
