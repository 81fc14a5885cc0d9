"""Structured pruning of BERT-style encoders: whole attention heads and FFN intermediate neurons, removed
physically (smaller Linear layers, fewer heads), then recovered by distillation from the unpruned model.

Importance, measured on the bundle's calibration text (unlabelled, so no task loss and no gradients): a
head's score is the magnitude of what it adds to the attention output projection (the norm of
``context_h @ W_o[:, h]^T`` per token, averaged over real tokens); an FFN neuron's is its mean absolute
activation times the norm of its output weight column. Both measure what the unit contributes to the residual
stream, which is what is lost when it is removed. The lowest-scoring units of each layer go; at least one
head stays, and the FFN width stays a multiple of ``multiple`` (INT8 GEMM kernels work in 16/32/64 blocks).

Recovery, in two stages, on unlabelled inputs (the bundle's ``unlabelled`` corpus, else its calibration data;
never its evaluation data):
- ``refit`` (default): layer by layer, each pruned block's output projection (``attention.output.dense``,
  ``output.dense``) is solved by ridge least squares so that the block's pre-LayerNorm sum (projection +
  residual) matches the unpruned model's on every real token. The inputs are the pruned model's own, so each
  layer also corrects the errors of those before it. A closed form over a few thousand sentences: seconds,
  no learning rate, and it recovers most of what pruning lost (the "mask tuning" idea of Kwon et al. 2022,
  A Fast Post-Training Pruning Framework for Transformers, applied to the projection weights).
- ``distill_steps``: then the student learns the teacher's outputs and each layer's hidden states (MSE) by
  gradient descent. The hidden size is never pruned, so the layers line up one to one.
Both run on batches cut to their longest real sequence when the model takes an ``attention_mask`` and its
output is unchanged by the cut (checked on the first batch): padding is most of a 128-token input.

The layout it knows: modules with ``query``/``key``/``value`` Linear layers and ``attention_head_size``
(BertSelfAttention and its relatives: BERT, RoBERTa, MiniLM, ELECTRA), their layer's ``attention.output.dense``,
``intermediate.dense`` and ``output.dense``. Anything else is refused in one line.
"""

from __future__ import annotations

import contextlib
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
    batch: int = Field(default=32, gt=0, description="samples per forward pass (scoring, refit, recovery step)")
    lr: float = Field(default=5e-5, gt=0)
    refit: bool = Field(default=True, description="least-squares refit of each pruned block's output projection")
    ridge: float = Field(default=1e-3, ge=0, description="refit regularisation, relative to the mean feature power")
    samples: int = Field(default=1000, gt=0, description="unlabelled samples for scoring, refit and distillation")


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
        cfg: PruneTransformerConfig = self.config  # type: ignore[assignment]
        # --auto builds the same pruned model for each runtime: it is made once per search
        key = ("prune_transformer", id(artifact.module), cfg.model_dump_json(exclude={"tolerance", "on_fail"}))
        if key not in ctx.cache:
            ctx.cache[key] = self._prune(bundle, artifact, cfg)
        return ctx.cache[key]

    def _prune(self, bundle: ModelBundle, artifact: Artifact, cfg: PruneTransformerConfig) -> Artifact:
        import torch

        teacher = artifact.module.eval()
        student = copy.deepcopy(teacher).eval()
        layers, t_layers = encoder_layers(student), encoder_layers(teacher)
        source = bundle.unlabelled() if bundle.unlabelled is not None else bundle.calibration
        feeds = _batched(bundle, teacher, [_tensors(f) for f in source[: cfg.samples]], cfg.batch)
        heads, neurons = _importance(student, layers, feeds, bundle)
        keeps = [_keep_sets(h, n, cfg) for h, n in zip(heads, neurons, strict=True)]
        if all(len(kh) == len(h) and len(kf) == len(n) for (kh, kf), h, n in zip(keeps, heads, neurons, strict=True)):
            raise PassNotApplicable(
                f"prune_transformer (heads {cfg.heads:g}, ffn {cfg.ffn:g}) removes nothing from {bundle.name!r}: "
                f"{len(heads[0])} heads and {len(neurons[0])} FFN neurons per layer round to none at these fractions"
                f" (FFN widths stay multiples of {cfg.multiple}); use larger fractions"
            )
        shapes = []
        with torch.no_grad():
            for i, layer in enumerate(layers):
                keep_heads, keep_ffn = keeps[i]
                width = len(neurons[i])
                if len(keep_heads) < len(heads[i]):
                    _prune_heads(layer, keep_heads)
                    if cfg.refit:
                        _refit(student, teacher, layer.attention.output, t_layers[i].attention.output, feeds,
                               bundle, cfg.ridge)  # fmt: skip
                if len(keep_ffn) < width:
                    _prune_ffn(layer, keep_ffn)
                    if cfg.refit:
                        _refit(student, teacher, layer.output, t_layers[i].output, feeds, bundle, cfg.ridge)
                shapes.append({"heads": len(keep_heads), "ffn": len(keep_ffn)})
        if cfg.distill_steps:
            _distill(student, teacher, layers, t_layers, feeds, steps=cfg.distill_steps, lr=cfg.lr)
        notes = {
            "heads": cfg.heads,
            "ffn": cfg.ffn,
            "layers": shapes,
            "refit": cfg.refit,
            "distill_steps": cfg.distill_steps,
            "samples": sum(len(f[0]) for f in feeds),
            "importance": "contribution magnitude on unlabelled text",
        }
        return artifact.evolve(module=student.eval(), notes=notes)


def _tensors(feed: dict[str, np.ndarray]) -> list[Any]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()]


def _batched(bundle: ModelBundle, module: Any, feeds: list[list[Any]], size: int) -> list[list[Any]]:
    """The samples stacked ``size`` at a time, each batch cut to its longest real sequence where the model
    takes an attention mask and gives the same output on the cut batch (sorted by length first so that
    batches waste little; shapes that differ otherwise: one sample at a time)."""
    import torch

    if len({tuple(tuple(t.shape[1:]) for t in feed) for feed in feeds}) > 1:
        return feeds
    names = list(bundle.input_names)
    lengths = [int(f[names.index("attention_mask")].sum()) for f in feeds] if "attention_mask" in names else None
    order = sorted(range(len(feeds)), key=lambda i: lengths[i]) if lengths else list(range(len(feeds)))
    groups = [[feeds[i] for i in order[j : j + size]] for j in range(0, len(order), size)]
    batches = [[torch.cat(parts, dim=0) for parts in zip(*group, strict=True)] for group in groups]
    if not lengths:
        return batches
    seq = batches[-1][names.index("attention_mask")].shape[1]

    def cut(batch: list[Any]) -> list[Any]:
        n = int(batch[names.index("attention_mask")].sum(1).max())
        return [t[:, :n] if t.dim() > 1 and t.shape[1] == seq else t for t in batch]

    with torch.no_grad():
        full, short = module(*batches[0]), module(*cut(batches[0]))
    same = isinstance(full, torch.Tensor) and isinstance(short, torch.Tensor) and full.shape == short.shape \
        and torch.allclose(full, short, atol=1e-4, rtol=1e-3)  # fmt: skip
    return [cut(b) for b in batches] if same else batches


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


def _keep_sets(heads: Any, neurons: Any, cfg: PruneTransformerConfig) -> tuple[list[int], list[int]]:
    """The heads and FFN neurons one layer keeps: at least one head, FFN widths a multiple of ``cfg.multiple``."""
    keep_heads = _keep(heads, max(1, len(heads) - round(len(heads) * cfg.heads)))
    width = len(neurons)
    target = min(width, max(cfg.multiple, math.ceil(width * (1 - cfg.ffn) / cfg.multiple) * cfg.multiple))
    return keep_heads, _keep(neurons, target)


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


class _Stop(Exception):
    """Ends a forward pass once a hook has what it needs (the layers after it are not needed)."""


def _refit(student: Any, teacher: Any, block: Any, t_block: Any, feeds: list[list[Any]], bundle: ModelBundle,
           ridge: float) -> None:  # fmt: skip
    """Solve ``block.dense`` (weight and bias) so that ``dense(x) + residual`` matches the teacher's pre-LayerNorm
    sum of the same block on every real token: ridge least squares over the normal equations (float64)."""
    import torch

    if not hasattr(block, "LayerNorm") or not hasattr(t_block, "LayerNorm"):
        return  # a layout without the post-LayerNorm residual block: pruned, not refitted
    width, hidden = block.dense.in_features, block.dense.out_features
    xtx = torch.zeros(width + 1, width + 1, dtype=torch.float64)
    xty = torch.zeros(width + 1, hidden, dtype=torch.float64)
    seen: dict[str, Any] = {}

    def on_student(_mod: Any, args: tuple, kwargs: dict) -> None:
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        seen["r"] = args[1] if len(args) > 1 else kwargs["input_tensor"]
        raise _Stop

    def on_teacher(_mod: Any, args: tuple, kwargs: dict) -> None:
        seen["t"] = args[0] if args else next(iter(kwargs.values()))
        raise _Stop

    handles = [block.register_forward_pre_hook(on_student, with_kwargs=True),
               t_block.LayerNorm.register_forward_pre_hook(on_teacher, with_kwargs=True)]  # fmt: skip
    try:
        for feed in feeds:
            for model in (student, teacher):
                with contextlib.suppress(_Stop):
                    model(*feed)
            mask = _token_mask(feed, bundle)
            x = _real_tokens(seen["x"], mask).double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
            xtx += x.T @ x
            xty += x.T @ (_real_tokens(seen["t"], mask) - _real_tokens(seen["r"], mask)).double()
    finally:
        for h in handles:
            h.remove()
    xtx.diagonal()[:-1] += ridge * float(xtx.diagonal()[:-1].mean())  # not on the bias column
    solution = torch.linalg.solve(xtx, xty)
    block.dense.weight.data.copy_(solution[:-1].T.to(block.dense.weight.dtype))
    block.dense.bias.data.copy_(solution[-1].to(block.dense.bias.dtype))


def _real_tokens(t: Any, mask: Any) -> Any:
    """``[batch, tokens, features]`` as ``[real tokens, features]`` (every token where there is no mask)."""
    return t[mask.bool()] if mask is not None else t.reshape(-1, t.shape[-1])


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
    order = np.random.default_rng(0).permutation(len(feeds))  # the batches are sorted by length: mix them
    try:
        for step in range(steps):
            feed = feeds[order[step % len(feeds)]]
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
