"""What the pipeline needs to know about a model, whatever it is: how to feed it, score it, train it.

Example models (``models/``), a user's ``module:function`` and a bare ONNX file all become one
``ModelBundle``, so passes and the gate never special-case a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Feed = dict[str, np.ndarray]
Task = Literal["classification", "ranking", "embedding", "custom"]


@dataclass
class ModelBundle:
    """A model plus the data that judges it.

    ``score`` maps the first output, concatenated over ``eval_feeds``, to the metric (higher is better);
    ``score_outputs``, when set, is given every output instead and returns the metric and its details
    (a user's model is judged on all its outputs: ``edgekit.fidelity``).
    ``train_batches`` yields ``(feed, target)`` for passes that fine-tune (structured pruning, distillation).
    """

    name: str
    task: Task
    input_names: list[str]
    output_names: list[str]
    example: Feed
    calibration: list[Feed]
    eval_feeds: list[Feed]
    metric_name: str
    score: Callable[[np.ndarray], float]
    module: Any = None
    onnx_path: Path | None = None
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    train_batches: Callable[[], Iterable[tuple[Feed, np.ndarray]]] | None = None
    extra_metrics: Callable[[np.ndarray], dict[str, float]] | None = None
    score_outputs: Callable[[list[np.ndarray]], tuple[float, dict[str, float]]] | None = None
    model_type: Literal["transformer"] | None = None
    # Minimums that extra metrics must keep at every step, on top of the tolerance on the main metric: a mean
    # can hide the few inputs a compression broke, so the model's author names the checks that catch them
    # (MiniLM: 1st-percentile cosine and nearest-neighbour agreement on a held-out set).
    floors: dict[str, float] = field(default_factory=dict)
    # More unlabelled inputs than ``calibration`` for passes that fit a compressed model to the original's
    # outputs (prune_transformer); None: they use ``calibration``. Never drawn from the evaluation data.
    unlabelled: Callable[[], list[Feed]] | None = None
    # A smaller model with the same interface that --auto may distil into: the ``distill`` pass settings
    # (``student`` as "package.module:function", ``student_kwargs``, ``epochs``). Only the model's author
    # knows a student architecture that fits, so --auto tries distillation only where one is given.
    student: dict[str, Any] | None = None
    description: str = ""
    # What a device must do around the model (written into the package manifest for the app that feeds it).
    preprocessing: dict[str, Any] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)

    def predict_all(self, predict: Callable[[Feed], list[np.ndarray]]) -> np.ndarray:
        return np.concatenate([predict(feed)[0] for feed in self.eval_feeds], axis=0)

    def outputs_all(self, predict: Callable[[Feed], list[np.ndarray]]) -> list[np.ndarray]:
        """Every output, each concatenated over ``eval_feeds`` along the sample axis."""
        return concat_outputs([predict(feed) for feed in self.eval_feeds])

    def evaluate(self, predict: Callable[[Feed], list[np.ndarray]]) -> tuple[float, dict[str, float]]:
        if self.score_outputs is not None:
            return self.score_outputs(self.outputs_all(predict))
        outputs = self.predict_all(predict)
        extra = self.extra_metrics(outputs) if self.extra_metrics else {}
        return float(self.score(outputs)), extra


def concat_outputs(runs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per output, the runs joined along the sample axis."""
    return [np.concatenate([np.atleast_1d(r[i]) for r in runs], axis=0) for i in range(len(runs[0]))]


def split_batches(arrays: Feed, batch_size: int) -> list[Feed]:
    """Cut a feed of equal-length arrays into batches, keeping the last short batch."""
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]
