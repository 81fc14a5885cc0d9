"""Issue 19: each pass declares its name, output precision and smoke-test tolerance once; ``--auto``, the
profile check and the package's smoke test read those declarations."""

from __future__ import annotations

import pytest

from edgekit.auto import candidates, check_precisions, known_precisions
from edgekit.errors import ProfileInvalid
from edgekit.passes import PRECISIONS, REGISTRY, precisions_of
from edgekit.profiles import DeviceProfile


def test_each_pass_is_registered_under_the_type_a_recipe_writes():
    for key, cls in REGISTRY.items():
        assert key == cls.name == cls.Config.model_fields["type"].default
    assert set(PRECISIONS) >= {"fp32", "int8", "fp16"} and PRECISIONS[0] == "fp32"
    assert REGISTRY["quantize_ort"].precision == "int8" and REGISTRY["export_onnx"].precision is None


def _with_precisions(profile: DeviceProfile, precisions: list[str]) -> DeviceProfile:
    return DeviceProfile.model_validate(profile.model_dump() | {"precisions": precisions})


def test_auto_offers_only_candidates_whose_passes_write_precisions_the_profile_lists(digits, x86):
    every = {
        r.name: precisions_of(r.passes) for r in candidates(digits, _with_precisions(x86, ["fp32", "fp16", "int8"]))
    }
    assert any("int8" in p for p in every.values()) and any("fp16" in p for p in every.values())
    for allowed in (["fp32"], ["fp32", "int8"], ["fp32", "fp16"]):
        offered = {r.name: precisions_of(r.passes) for r in candidates(digits, _with_precisions(x86, allowed))}
        assert offered == {n: p for n, p in every.items() if p <= set(allowed)}, allowed
        assert all(not p for n, p in offered.items() if n.endswith("-fp32"))  # the parents are always there


def test_a_profile_may_name_a_new_precision_but_packaging_says_nothing_writes_it(digits, x86, tmp_path):
    """int4 passes the profile schema (no Literal to edit when a pass declares it) and is refused in one
    line at packaging time while no pass writes it; a malformed name is refused at load."""
    from edgekit.build import run_package

    int4 = _with_precisions(x86, ["fp32", "int8", "int4"])
    check_precisions(x86)
    with pytest.raises(ProfileInvalid, match="int4, which no pass writes") as info:
        run_package(digits, profile=int4, recipe=None, auto=True, out=tmp_path / "out")
    assert "\n" not in info.value.one_line() and "fp32" in str(info.value)
    assert not (tmp_path / "out").exists()
    assert "bf16" in known_precisions()  # a runtime's own hint counts
    with pytest.raises(ValueError, match="precisions"):
        _with_precisions(x86, ["INT 8"])
