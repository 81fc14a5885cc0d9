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
