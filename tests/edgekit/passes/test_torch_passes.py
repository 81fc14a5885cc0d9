"""Torch-side passes on the real, trained digits CNN and recommender."""

from pathlib import Path

import numpy as np
import pytest

from edgekit.artifact import Artifact
from edgekit.errors import PassNotApplicable
from edgekit.evaluate import compressed_size_bytes, torch_macs, torch_params
from edgekit.hostrt import predictor
from edgekit.passes import REGISTRY, PassContext


def run_pass(bundle, profile, tmp_path: Path, **cfg):
    p = REGISTRY[cfg["type"]](REGISTRY[cfg["type"]].Config(**cfg))
    ctx = PassContext(profile=profile, workdir=tmp_path, threads=2, static_shapes=False)
    art = Artifact(kind="torch", module=bundle.module)
    p.check(bundle, art, ctx)
    return p.run(bundle, art, ctx)


def accuracy(bundle, artifact):
    return bundle.evaluate(predictor(artifact, threads=2))[0]


def test_unstructured_pruning_reaches_the_sparsity_and_compresses_but_keeps_shapes(digits, x86, tmp_path):
    out = run_pass(digits, x86, tmp_path, type="prune_unstructured", sparsity=0.6)
    assert out.notes["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert torch_params(out.module) < 0.5 * torch_params(digits.module)
    assert torch_macs(out.module, digits.example) == torch_macs(digits.module, digits.example)  # dense: same MACs
    assert compressed_size_bytes(out.module) < 0.7 * compressed_size_bytes(digits.module)
    assert torch_params(digits.module) == sum(
        int((p != 0).sum()) for p in digits.module.parameters()
    )  # input untouched


def test_structured_pruning_removes_channels_and_keeps_accuracy(digits, x86, tmp_path):
    out = run_pass(digits, x86, tmp_path, type="prune_structured", ratio=0.5, finetune_epochs=3)
    assert out.notes["shapes"]["features.0"][0] == 32  # conv1: 64 -> 32 output channels, physically
    assert out.notes["shapes"]["classifier.3"][0] == 10  # the output layer keeps its width
    assert torch_macs(out.module, digits.example) < 0.5 * torch_macs(digits.module, digits.example)
    base = accuracy(digits, Artifact(kind="torch", module=digits.module))
    assert base - accuracy(digits, out) <= 0.01


def test_structured_pruning_handles_the_dlrm_embedding_interaction(recommender, x86, tmp_path):
    out = run_pass(recommender, x86, tmp_path, type="prune_structured", ratio=0.5, finetune_epochs=1)
    assert torch_params(out.module) < torch_params(recommender.module)
    scores = predictor(out, threads=2)(recommender.example)[0]
    assert scores.shape == (20,)


def test_lowrank_factorises_the_big_linear_layer(digits, x86, tmp_path):
    out = run_pass(digits, x86, tmp_path, type="lowrank", rank_ratio=0.25, finetune_epochs=2)
    assert "classifier.1" in out.notes["ranks"] and "/" in out.notes["ranks"]["classifier.1"]
    assert torch_params(out.module) < 0.6 * torch_params(digits.module)
    assert accuracy(digits, out) >= accuracy(digits, Artifact(kind="torch", module=digits.module)) - 0.02


def test_lowrank_by_energy_keeps_more_rank_for_more_energy(digits, x86, tmp_path):
    low = run_pass(digits, x86, tmp_path / "a", type="lowrank", energy=0.5)
    high = run_pass(digits, x86, tmp_path / "b", type="lowrank", energy=0.95)
    assert torch_params(low.module) < torch_params(high.module)


def test_distillation_trains_a_smaller_student_close_to_the_teacher(digits, x86, tmp_path):
    out = run_pass(
        digits, x86, tmp_path, type="distill", student="edgekit_models.digits_cnn:build_student",
        student_kwargs={"width": 0.5}, epochs=8,
    )  # fmt: skip
    assert torch_params(out.module) < 0.3 * torch_params(digits.module)
    assert accuracy(digits, out) >= 0.95


def test_distillation_refuses_a_student_with_another_interface(digits, x86, tmp_path):
    with pytest.raises(PassNotApplicable, match="student"):
        run_pass(digits, x86, tmp_path, type="distill", student="edgekit_models.recommender:build_student")


def test_structured_pruning_is_not_applicable_without_training_data(x86, tmp_path):
    from usermodels import small_mlp

    from edgekit.modelsrc import fidelity_bundle

    module, inputs = small_mlp()
    bundle = fidelity_bundle("mlp", module=module, inputs=inputs)
    with pytest.raises(PassNotApplicable, match="finetune_epochs: 0"):
        run_pass(bundle, x86, tmp_path, type="prune_structured", ratio=0.5)
    out = run_pass(bundle, x86, tmp_path, type="prune_structured", ratio=0.5, finetune_epochs=0)
    assert np.isfinite(predictor(out, threads=1)(bundle.example)[0]).all()
