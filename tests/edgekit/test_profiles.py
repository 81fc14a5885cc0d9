import json

import pytest

from edgekit.errors import ProfileInvalid, ProfileNotFound
from edgekit.profiles import DeviceProfile, list_profiles, load_profile, load_profile_file, probe, profile_to_yaml

REQUIRED = {"rpi4", "rpi5", "jetson-orin-nano", "intel-core-ultra-npu", "x86-64-generic", "rpi-zero-2w"}


def test_every_shipped_profile_validates_and_the_required_boards_exist():
    profiles = {p.name: p for p in list_profiles()}
    assert set(profiles) >= REQUIRED
    assert profiles["intel-core-ultra-npu"].static_shapes is True
    assert profiles["intel-core-ultra-npu"].runtimes[0] == "openvino:NPU"
    assert "onnxruntime:TensorrtExecutionProvider" in profiles["jetson-orin-nano"].runtimes


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    text = (load_profile("rpi4").model_dump_json()).replace('"cores":4', '"cores":4,"coress":4')
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    with pytest.raises(ProfileInvalid, match="coress: unknown key"):
        load_profile_file(path)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ncores: [1, 2\n")
    with pytest.raises(ProfileInvalid, match="not valid YAML at line"):
        load_profile_file(path)


def test_bad_runtime_string_is_rejected(tmp_path):
    data = load_profile("rpi4").model_dump(mode="json")
    data["runtimes"] = ["tensorflow"]
    with pytest.raises(ValueError, match="runtime"):
        DeviceProfile.model_validate(data)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileNotFound, match=r"known: .*rpi4"):
        load_profile("rpi9")


def test_probe_describes_this_machine_as_a_valid_profile(tmp_path):
    import os

    profile = probe(name="probed")
    assert profile.cores == os.cpu_count()
    assert any(r.startswith("onnxruntime:") for r in profile.runtimes)
    assert "openvino:CPU" in profile.runtimes
    path = tmp_path / "p.yaml"
    path.write_text(profile_to_yaml(profile))
    assert load_profile(str(path)) == profile


def test_cli_profiles_list_json_and_show(cli, tmp_path):
    code, out, _ = cli("profiles", "list", "--format", "json")
    assert code == 0
    assert {p["name"] for p in json.loads(out)} >= REQUIRED
    code, out, _ = cli("profiles", "show", "rpi5", "--format", "json")
    assert code == 0 and json.loads(out)["cores"] == 4
    code, out, err = cli("profiles", "show", "rpi9")
    assert code != 0 and out == ""
    assert "ProfileNotFound" in err and "Traceback" not in err
    code, _, _ = cli("profiles", "probe", "--out", tmp_path / "me.yaml", "--name", "me")
    assert code == 0 and load_profile(str(tmp_path / "me.yaml")).name == "me"


def test_int8_speed_flags_name_what_decides_int8_speed_in_a_fixed_order():
    from edgekit.profiles import cpu_flags, int8_speed_flags

    xeon_amx = {"sse4_2", "avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "fma"}
    assert int8_speed_flags(xeon_amx) == ["avx2", "avx512_vnni", "amx_int8"]
    assert int8_speed_flags({"avx", "avx2", "fma"}) == ["avx2"]  # the EPYC without VNNI
    assert int8_speed_flags({"fp", "asimd", "crc32"}) == []  # Cortex-A72 (rpi4): no dot product
    assert int8_speed_flags({"asimd", "asimddp", "i8mm"}) == ["asimddp", "i8mm"]
    assert int8_speed_flags() == int8_speed_flags(cpu_flags())


def test_bench_sections_name_the_cpu_flags_or_say_they_were_not_recorded():
    from edgekit.bench import header

    res = {"date": "2026-11-30", "machine": "AMD EPYC, 2 cores", "command": "make bench (models)"}
    assert "(CPU flags avx2)" in header(res | {"cpu_flags": ["avx2"]})
    assert "none of avx2" in header(res | {"cpu_flags": []})
    assert "CPU flags not recorded by this run" in header(res)
