"""Structured channel/neuron pruning that physically removes channels and fixes every dependent layer.

Dependency tracking (Conv -> BatchNorm -> next Conv, Flatten -> Linear, residual and concat groups)
is done by torch-pruning's DepGraph rather than by hand: it is the maintained tool for exactly this.
Every layer whose channels reach a model output keeps its width (all heads, a convolutional output, the
trunk a residual output adds to), found by walking the autograd graph back from each output; embedding
tables keep theirs too. The model's interface (every output's shape) is unchanged, and checked.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

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
                "use prune_transformer (heads and FFN neurons), lowrank or quantization for it"
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
        # Keep the interface: every layer feeding an output, and embedding tables whose width ties to interactions.
        ignored = [m for m in module.modules() if isinstance(m, nn.Embedding)] + output_layers(module, example, bundle)
        shapes_before = _output_shapes(module, example)
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
        if _output_shapes(module, example) != shapes_before:  # torch-pruning reached an output another way
            raise PassFailed(
                f"prune_structured would change the output shapes of {bundle.name!r} "
                f"({shapes_before} -> {_output_shapes(module, example)}); leave it out for this model"
            )
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


def _sets_channels(layer: Any) -> bool:
    """Layers that set the channel count of what they output (subclasses included); what lies between them
    and an output (BatchNorm, activations, pooling, adds, reshapes, concatenations) passes it through."""
    from torch import nn

    return isinstance(layer, nn.Linear | nn.modules.conv._ConvNd)


def _outputs(module: Any, example: tuple[Any, ...]) -> list[Any]:
    out = module(*example)
    return list(out) if isinstance(out, tuple | list) else [out]


def _output_shapes(module: Any, example: tuple[Any, ...]) -> list[tuple[int, ...]]:
    import torch

    with torch.no_grad():
        return [tuple(o.shape) for o in _outputs(module, example)]


def output_layers(module: Any, example: tuple[Any, ...], bundle: ModelBundle) -> list[Any]:
    """The layers whose output channels reach a model output without another such layer in between.

    Forward hooks note which autograd node each layer's output is; a walk back from every output through
    the graph stops at the first of those nodes that belongs to a channel-setting layer (Linear, Conv),
    which must keep its width. An output the walk cannot follow (no autograd history: an argmax, an integer
    output) means the layers feeding it cannot be told: refused, before any pruning.
    """
    import torch

    made_by: dict[Any, Any] = {}

    def note(layer: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            made_by.setdefault(output.grad_fn, layer)

    for p in module.parameters():  # a frozen model (requires_grad off) has no autograd graph to walk
        p.requires_grad_(True)
    hooks = [m.register_forward_hook(note) for m in module.modules() if _sets_channels(m)]
    try:
        with torch.enable_grad():
            outputs = _outputs(module, example)
    finally:
        for h in hooks:
            h.remove()
    protected: list[Any] = []
    for i, out in enumerate(outputs):
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            raise PassNotApplicable(
                f"prune_structured cannot tell which layers feed output {i} of {bundle.name!r} (it has no gradient "
                "history: an integer or argmax output); leave prune_structured out for this model"
            )
        seen, todo = set(), [out.grad_fn]
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            layer = made_by.get(node)
            if layer is not None:
                if all(layer is not p for p in protected):
                    protected.append(layer)
                continue
            todo.extend(n for n, _ in node.next_functions)
    return protected
