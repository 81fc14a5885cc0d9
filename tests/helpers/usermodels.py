"""User-style models referenced as ``usermodels:function`` by the CLI tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class NotExportable(nn.Module):
    """Uses an operator (SVD) that the ONNX exporter has no mapping for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(self.fc(x)).S


def not_exportable():
    return NotExportable().eval(), {"x": np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)}


def small_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4)).eval()
    return model, {"x": np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)}


def _rng_inputs(shape: tuple[int, ...], n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def ctr_sigmoid():
    """A click-through-rate model: one probability per sample (cosine cannot judge it)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1), nn.Sigmoid()
    )
    return model.eval(), {"features": _rng_inputs((32,), n=64)}


class TinyOutputs(nn.Module):
    """Outputs of norm ~1e-8, as a randomly initialised deep net gives: must still agree with itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 1e-9


def tiny_outputs():
    torch.manual_seed(0)
    return TinyOutputs().eval(), {"x": _rng_inputs((16,))}


class SegNet(nn.Module):
    """Conv-only: the output is a feature map whose channel count is the interface."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # fmt: skip
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def segnet():
    torch.manual_seed(0)
    return SegNet().eval(), {"image": _rng_inputs((3, 16, 16), n=16)}


class TwoHeads(nn.Module):
    """Two outputs; the regression head is defined first, so 'the last Linear' is the wrong one to protect."""

    def __init__(self) -> None:
        super().__init__()
        self.reg = nn.Linear(64, 10)
        self.trunk = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.cls = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.cls(h), self.reg(h)


def two_heads():
    torch.manual_seed(0)
    return TwoHeads().eval(), {"x": _rng_inputs((20,))}


class Residual(nn.Module):
    """The output is the trunk plus a branch: the trunk's channels are the interface too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return h + self.branch(h)


def residual():
    torch.manual_seed(0)
    return Residual().eval(), {"image": _rng_inputs((3, 8, 8), n=16)}


class ArgmaxOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).argmax(1)


def argmax_out():
    torch.manual_seed(0)
    return ArgmaxOut().eval(), {"x": _rng_inputs((8,))}


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(x)}


def dict_out():
    return DictOut().eval(), {"x": _rng_inputs((8,))}


def float64_inputs():
    return nn.Linear(8, 4).eval(), {"x": np.zeros((4, 8))}


def no_batch_axis():
    return nn.Linear(8, 4).eval(), {"x": np.float32(1.0)}


def needs_arguments(width):
    return nn.Linear(width, 4).eval(), {"x": _rng_inputs((width,))}


def raises_inside():
    raise RuntimeError("weights file /data/model.pt not found")


class Noisy(nn.Module):
    """Random even in eval mode (sampling in forward): no compressed copy can be judged against it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return h + torch.randn_like(h)


def random_at_eval():
    return Noisy(), {"x": _rng_inputs((8,))}


def not_a_tuple():
    return nn.Linear(8, 4)


def with_bad_option():
    return nn.Linear(8, 4).eval(), {"x": _rng_inputs((8,))}, {"model_typ": "transformer"}


class TokenModel(nn.Module):
    """Token ids of any length in, one vector per sequence out (a text encoder's interface)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.fc = nn.Linear(32, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


def export_token_model(path) -> None:
    """An ONNX file with a dynamic batch and a dynamic sequence length."""
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 7))
    torch.onnx.export(TokenModel().eval(), (ids,), str(path), input_names=["ids"], output_names=["vec"],
                      dynamic_axes={"ids": {0: "batch", 1: "seq"}, "vec": {0: "batch"}}, dynamo=False)  # fmt: skip
