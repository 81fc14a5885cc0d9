"""A small CNN on scikit-learn's 8x8 handwritten digits (ships with scikit-learn, no download).

Metric: top-1 accuracy on a stratified 25 % held-out split (450 images).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from edgekit_models._train import cached_state, fit
from torch import nn

from edgekit.bundle import ModelBundle, split_batches


class DigitsCNN(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3, h = (max(4, round(c * width)) for c in (64, 128, 256, 128))
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 16, h), nn.ReLU(), nn.Linear(h, num_classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def build_student(width: float = 0.5) -> nn.Module:
    """A thinner DigitsCNN, the default student for distillation recipes."""
    return DigitsCNN(width=width)


def _train_batches(x: np.ndarray, y: np.ndarray, batch: int = 64):
    def batches(epoch: int):
        order = np.random.default_rng(epoch).permutation(len(x))
        return [
            ((torch.from_numpy(x[idx]),), torch.from_numpy(y[idx])) for idx in np.array_split(order, len(x) // batch)
        ]

    return batches


def load(*, cache_dir: Path) -> ModelBundle:
    x_tr, y_tr, x_te, y_te = data()
    model = cached_state(
        DigitsCNN(),
        key="digits_cnn",
        cache_dir=cache_dir,
        train=lambda m: fit(
            m, _train_batches(x_tr, y_tr), nn.functional.cross_entropy, epochs=30, lr=2e-3, weight_decay=1e-4
        ),
    )

    epochs = itertools.count(1000)

    def train_batches():
        for (inputs,), target in _train_batches(x_tr, y_tr)(next(epochs)):
            yield {"image": inputs.numpy()}, target.numpy()

    return ModelBundle(
        name="digits_cnn",
        task="classification",
        module=model,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        example={"image": x_te[:1]},
        calibration=split_batches({"image": x_tr[:256]}, 32),
        eval_feeds=split_batches({"image": x_te}, 64),
        metric_name="accuracy",
        score=lambda logits: float((logits.argmax(axis=1) == y_te).mean()),
        train_batches=train_batches,
        student={"student": "edgekit_models.digits_cnn:build_student", "student_kwargs": {"width": 0.5}, "epochs": 8},
        description="DigitsCNN (3 conv + 2 FC, BatchNorm) on sklearn digits, 450 held-out images",
        preprocessing={"image": "8x8 grayscale, NCHW float32, pixel intensity 0-16 divided by 16"},
        postprocessing={"logits": "argmax over 10 classes = the digit 0-9"},
    )
