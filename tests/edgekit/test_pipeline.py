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
