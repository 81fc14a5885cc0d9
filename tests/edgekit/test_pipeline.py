import pytest

from edgekit.errors import PassNotApplicable, RecipeInvalid
from edgekit.pipeline import plan
from edgekit.profiles import load_profile
from edgekit.recipe import parse_recipe


def names(recipe, bundle, profile):
    return [p.name for p in plan(parse_recipe(recipe), bundle, profile)]


def test_planner_inserts_conversions_and_ends_in_the_profile_runtime(digits, x86):
    assert names({"runtime": "onnxruntime", "passes": []}, digits, x86) == ["export_onnx"]
    assert names({"passes": []}, digits, x86) == ["export_onnx", "convert_openvino"]  # x86 prefers OpenVINO
    assert names(
        {"passes": [{"type": "prune_structured", "ratio": 0.5}, {"type": "quantize_openvino"}]}, digits, x86
    ) == [
        "prune_structured",
        "export_onnx",
        "convert_openvino",
        "quantize_openvino",
    ]
    # fp16 runs on either kind: for an OpenVINO target it acts on the IR, not on the ONNX file
    assert names({"runtime": "openvino", "passes": [{"type": "fp16"}]}, digits, x86)[-2:] == [
        "convert_openvino",
        "fp16",
    ]


def test_runtime_the_profile_lacks_is_refused(digits):
    with pytest.raises(RecipeInvalid, match="lists only"):
        plan(parse_recipe({"runtime": "openvino", "passes": []}), digits, load_profile("rpi-zero-2w"))


def test_nncf_pass_with_an_onnxruntime_target_is_refused(digits, x86):
    with pytest.raises(RecipeInvalid, match="set 'runtime: openvino'"):
        plan(parse_recipe({"runtime": "onnxruntime", "passes": [{"type": "quantize_openvino"}]}), digits, x86)


def test_torch_pass_after_export_is_refused(digits, x86):
    recipe = {
        "runtime": "onnxruntime",
        "passes": [{"type": "quantize_ort"}, {"type": "prune_structured", "ratio": 0.3}],
    }
    with pytest.raises(PassNotApplicable, match="needs a torch model"):
        plan(parse_recipe(recipe), digits, x86)


def test_a_floor_on_an_extra_metric_fails_the_gate_that_the_tolerance_lets_through(digits, tmp_path):
    """A mean can hide the few samples a compression broke: the model's floors are checked at every step too."""
    import dataclasses

    import numpy as np
    import torch

    from edgekit.build import run_package
    from edgekit.errors import GateFailed

    with torch.no_grad():  # the fp32 model's classes, which every step is compared with
        labels = digits.predict_all(lambda f: [digits.module(*map(torch.from_numpy, f.values())).numpy()]).argmax(1)
    floored = dataclasses.replace(
        digits, floors={"agreement with fp32": 0.999},
        extra_metrics=lambda out: {"agreement with fp32": float(np.mean(out.argmax(1) == labels))},
    )  # fmt: skip
    pruned = {"runtime": "onnxruntime", "tolerance": 0.9, "passes": [{"type": "prune_unstructured", "sparsity": 0.9}]}
    with pytest.raises(GateFailed, match=r"failed its gate: agreement with fp32 0\.\d+ < floor 0\.999"):
        run_package(floored, profile="x86-64-generic", recipe=pruned, out=tmp_path / "a")
    ok = run_package(floored, profile="x86-64-generic", recipe={"runtime": "onnxruntime", "passes": []},
                     out=tmp_path / "b")  # fmt: skip
    assert ok.steps[-1].gate == "passed" and ok.steps[-1].extra_metrics["agreement with fp32"] >= 0.999
    assert ok.steps[-1].floors == {"agreement with fp32": 0.999}
    # without the floor the same pruning passes its (loose) tolerance: the floor made the difference
    assert run_package(digits, profile="x86-64-generic", recipe=pruned, out=tmp_path / "c").steps[-1].gate == "passed"
