"""``edgekit package`` end to end through the real CLI entry point: acceptance numbers and bad input."""

import json
from pathlib import Path

import pytest
from autorule import assert_choice_follows_the_measured_rule

RECIPES = Path(__file__).resolve().parents[2] / "models" / "recipes"
pytestmark = pytest.mark.integration


def package_json(cli, *args):
    code, out, err = cli("package", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)  # stdout holds exactly one JSON object, nothing else


def package_x86(cli, model, recipe, out):
    """Package ``model`` with ``recipe`` for x86-64-generic and return the JSON report."""
    return package_json(cli, model, "--profile", "x86-64-generic", "--recipe", recipe, "--out", out)


def by_name(report):
    return {s["name"]: s for s in report["steps"]}


def test_digits_static_int8_keeps_accuracy_and_shrinks_3_5x(cli, tmp_path, digits):
    report = package_x86(cli, "digits_cnn", RECIPES / "digits_int8_static.yaml", tmp_path / "o")
    steps = by_name(report)
    assert report["precision"] == "int8" and report["runtime"] == "onnxruntime:CPUExecutionProvider"
    assert steps["baseline"]["metric"] - steps["quantize_ort"]["metric"] <= 0.005  # <= 0.5 pp
    assert steps["export_onnx"]["size_bytes"] / steps["quantize_ort"]["size_bytes"] >= 3.5
    assert all(s["gate"] in {"baseline", "passed"} for s in report["steps"])
    # export and INT8 keep the weights: counted again, BN folding and rounding to zero read as "compression"
    for name in ("export_onnx", "quantize_ort"):
        assert steps[name]["params"] == steps["baseline"]["params"] and steps[name]["param_reduction"] == 0
        assert steps[name]["compute_reduction"] == 0
    for key in (
        "name",
        "params",
        "param_reduction",
        "macs",
        "compute_reduction",
        "size_bytes",
        "latency_ms",
        "metric_name",
        "metric",
        "performance_drop",
        "gate",
    ):
        assert key in report["steps"][-1]
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == ["model.onnx", "report.json", "sample"]
    assert json.loads((tmp_path / "o" / "report.json").read_text())["steps"] == report["steps"]


def test_digits_structured_pruning_halves_compute_within_1pp(cli, tmp_path):
    report = package_x86(cli, "digits_cnn", RECIPES / "digits_prune50.yaml", tmp_path / "o")
    steps = by_name(report)
    assert steps["baseline"]["metric"] - steps["export_onnx"]["metric"] <= 0.01
    assert steps["prune_structured"]["compute_reduction"] >= 0.5
    assert steps["prune_structured"]["param_reduction"] >= 0.5
    assert steps["export_onnx"]["params"] == steps["prune_structured"]["params"]  # what pruning left, carried


def test_recommender_int8_ndcg_drop_within_1_percent(cli, tmp_path):
    report = package_x86(cli, "recommender", RECIPES / "recommender_int8_dynamic.yaml", tmp_path / "o")
    last = report["steps"][-1]
    assert last["metric_name"] == "ndcg@10" and last["precision"] == "int8"
    assert last["performance_drop"] <= 0.01
    assert "auc" in last["extra_metrics"]


def test_auto_picks_a_candidate_within_tolerance_and_never_an_int8_slower_than_fp32(cli, tmp_path, digits):
    kept = tmp_path / "kept"
    report = package_json(
        cli, "digits_cnn", "--profile", "x86-64-generic", "--auto", "--out", tmp_path / "o", "--keep-candidates", kept
    )
    rows = assert_choice_follows_the_measured_rule(report)  # which candidate wins depends on this CPU
    assert rows[report["chosen"]]["performance_drop"] <= 0.01
    assert_kept_candidates_reproduce_their_rows(kept, rows, digits)


def test_auto_distils_into_the_student_the_model_names_and_only_then(cli, tmp_path, recommender):
    report = package_json(
        cli, "recommender", "--profile", "x86-64-generic", "--auto", "--only", "onnxruntime-distilled",
        "--out", tmp_path / "o", "--keep-candidates", tmp_path / "kept",
    )  # fmt: skip
    rows = {c["name"]: c for c in report["candidates"]}
    assert set(rows) == {"onnxruntime-fp32", "openvino-fp32", "onnxruntime-distilled"}
    student = rows["onnxruntime-distilled"]
    assert student["status"] == "ok" and student["precision"] == "fp32", student
    assert student["performance_drop"] <= 0.01  # the profile's tolerance, against the teacher's ndcg@10
    assert student["size_bytes"] < rows["onnxruntime-fp32"]["size_bytes"]
    assert_kept_candidates_reproduce_their_rows(tmp_path / "kept", rows, recommender)
    # a model that names no student gets no distillation candidate (none is invented for it)
    from dataclasses import replace

    from edgekit.auto import candidates
    from edgekit.profiles import load_profile

    profile = load_profile("x86-64-generic")
    assert "onnxruntime-distilled" in {c.name for c in candidates(recommender, profile)}
    assert "onnxruntime-distilled" not in {c.name for c in candidates(replace(recommender, student=None), profile)}


def assert_kept_candidates_reproduce_their_rows(kept, rows, bundle):
    """--keep-candidates: every built candidate is on disk with its row, and scores what the row says."""
    from edgekit.artifact import Artifact
    from edgekit.hostrt import predictor

    final = {n for n, r in rows.items() if r["status"] in ("ok", "slower-than-fp32")}
    # an over-tolerance candidate is kept when its gate failed after export; one stopped in torch has no file
    built = final | {n for n, r in rows.items() if r["status"] in ("over-tolerance", "over-budget")}
    names = {p.name for p in kept.iterdir()}
    assert final and final <= names <= built
    for name in names:
        saved = json.loads((kept / name / "candidate.json").read_text())
        assert saved["name"] == name and saved["metric"] == rows[name]["metric"]
        artifact = Artifact(
            kind=saved["kind"],
            path=kept / name / saved["entry"],
            precision=saved["precision"],
            runtime_config=saved["runtime_config"],
        )
        metric, _ = bundle.evaluate(predictor(artifact, threads=1))
        assert metric == pytest.approx(saved["metric"], abs=1e-9), name


def test_dry_run_prints_the_plan_without_writing(cli, tmp_path):
    code, out, _ = cli(
        "package",
        "digits_cnn",
        "--profile",
        "x86-64-generic",
        "--recipe",
        RECIPES / "digits_prune50_int8.yaml",
        "--out",
        tmp_path / "o",
        "--dry-run",
    )
    assert code == 0
    assert "prune_structured -> export_onnx -> quantize_ort" in out
    assert not (tmp_path / "o").exists()


def test_onnx_file_model_is_packaged_with_an_output_fidelity_metric(cli, tmp_path):
    fp32 = tmp_path / "fp32.yaml"
    fp32.write_text("runtime: onnxruntime\npasses: []\n")
    package_x86(cli, "digits_cnn", fp32, tmp_path / "a")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("runtime: onnxruntime\npasses:\n  - {type: quantize_ort, mode: static}\n")
    report = package_x86(cli, tmp_path / "a" / "model.onnx", recipe, tmp_path / "b")
    assert [s["name"] for s in report["steps"]] == ["baseline", "quantize_ort"]
    assert report["steps"][0]["metric_name"] == "output_fidelity"
    assert report["steps"][1]["metric"] > 0.99 and report["precision"] == "int8"


def test_quantizing_an_already_quantized_onnx_model_is_a_clean_error(cli, tmp_path):
    package_x86(cli, "digits_cnn", RECIPES / "digits_int8_static.yaml", tmp_path / "a")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("runtime: onnxruntime\npasses:\n  - {type: quantize_ort, mode: dynamic}\n")
    code, _, err = cli(
        "package",
        tmp_path / "a" / "model.onnx",
        "--profile",
        "x86-64-generic",
        "--recipe",
        recipe,
        "--out",
        tmp_path / "b",
    )
    assert code != 0 and "PassFailed" in err and "Traceback" not in err


# --- bad input: one line on stderr, exit code != 0, the previous output untouched -------------------------


def fails(cli, *args):
    code, _out, err = cli("package", *args)
    assert code != 0
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if "error" in line]) == 1, err
    return err


def test_unknown_profile(cli, tmp_path):
    assert "ProfileNotFound" in fails(cli, "digits_cnn", "--profile", "rpi9", "--auto", "--out", tmp_path / "o")


def test_unknown_recipe_key(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - {type: quantize_ort, calibraton: minmax}\n")
    err = fails(cli, "digits_cnn", "--profile", "x86-64-generic", "--recipe", recipe, "--out", tmp_path / "o")
    assert "RecipeInvalid" in err and "calibraton" in err


def test_pass_not_applicable_to_the_model(cli, tmp_path):
    onnx_in = tmp_path / "m.onnx"
    import torch
    from usermodels import small_mlp

    module, inputs = small_mlp()
    torch.onnx.export(module, (torch.from_numpy(inputs["x"][:1]),), str(onnx_in), input_names=["x"], dynamo=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - {type: prune_structured, ratio: 0.5}\n")
    err = fails(cli, onnx_in, "--profile", "x86-64-generic", "--recipe", recipe, "--out", tmp_path / "o")
    assert "PassNotApplicable" in err and "needs a torch model" in err


def test_model_that_fails_to_export(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("runtime: onnxruntime\npasses: []\n")
    err = fails(
        cli, "usermodels:not_exportable", "--profile", "x86-64-generic", "--recipe", recipe, "--out", tmp_path / "o"
    )
    assert "ExportFailed" in err


def test_gate_failure_leaves_the_previous_output_untouched(cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous good model")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "runtime: onnxruntime\ntolerance: 0.005\npasses:\n  - {type: prune_unstructured, sparsity: 0.98}\n"
    )
    err = fails(cli, "digits_cnn", "--profile", "x86-64-generic", "--recipe", recipe, "--out", out)
    assert "GateFailed" in err and "prune_unstructured" in err
    assert (out / "model.onnx").read_bytes() == b"previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "r.yaml"]  # no staging leftovers


def test_gate_failure_with_on_fail_skip_records_the_skip(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "runtime: onnxruntime\ntolerance: 0.005\npasses:\n"
        "  - {type: prune_unstructured, sparsity: 0.98, on_fail: skip}\n  - {type: quantize_ort, mode: static}\n"
    )
    code, out, err = cli(
        "package",
        "digits_cnn",
        "--profile",
        "x86-64-generic",
        "--recipe",
        recipe,
        "--out",
        tmp_path / "o",
        "--format",
        "json",
    )
    assert code == 0, err
    steps = by_name(json.loads(out))
    assert steps["prune_unstructured"]["gate"] == "skipped"
    assert (
        steps["quantize_ort"]["gate"] == "passed"
        and steps["quantize_ort"]["params"] > steps["prune_unstructured"]["params"]
    )


def test_unwritable_output_dir(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = fails(cli, "digits_cnn", "--profile", "x86-64-generic", "--auto", "--out", blocker / "out")
    assert "OutputNotWritable" in err


def test_neither_recipe_nor_auto(cli, tmp_path):
    assert "RecipeInvalid" in fails(cli, "digits_cnn", "--profile", "x86-64-generic", "--out", tmp_path / "o")


def test_unknown_model(cli, tmp_path):
    assert "ModelNotFound" in fails(cli, "resnet9000", "--profile", "x86-64-generic", "--auto", "--out", tmp_path / "o")


def test_out_never_deletes_what_edgekit_did_not_write_and_refuses_degenerate_paths(cli, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own notes")
    recipe = RECIPES / "digits_int8_static.yaml"
    err = fails(cli, "digits_cnn", "--profile", "x86-64-generic", "--recipe", recipe, "--out", mine)
    assert "OutputNotWritable" in err and "not written by edgekit" in err and "--force" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # refused before any work, nothing touched
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "thesis.tex").write_text("x")
    err = fails(cli, "digits_cnn", "--profile", "x86-64-generic", "--auto", "--out", tmp_path / "o",
                "--keep-candidates", kept)  # fmt: skip
    assert "--keep-candidates" in err and (kept / "thesis.tex").exists()
    monkeypatch.chdir(mine)
    for degenerate in (".", "..", str(tmp_path)):
        err = fails(cli, "digits_cnn", "--profile", "x86-64-generic", "--recipe", recipe, "--out", degenerate)
        assert "current directory or above it" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    monkeypatch.chdir(tmp_path)
    # what edgekit wrote is replaced on the next run, and --force replaces a foreign directory on request
    report = package_x86(cli, "digits_cnn", recipe, tmp_path / "o")
    assert package_x86(cli, "digits_cnn", recipe, tmp_path / "o")["chosen"] == report["chosen"]
    code, _, err = cli("package", "digits_cnn", "--profile", "x86-64-generic", "--recipe", recipe, "--out", mine,
                       "--force")  # fmt: skip
    assert code == 0, err
    assert not (mine / "notes.txt").exists() and (mine / "report.json").exists()


def test_a_model_over_the_profiles_max_model_mb_is_refused_or_left_out(cli, tmp_path):
    import yaml

    from edgekit.profiles import load_profile

    tiny = load_profile("x86-64-generic").model_dump(mode="json", exclude_none=True)
    tiny |= {"name": "tiny-flash", "max_model_mb": 0.5}  # digits fp32 is 3.4 MB, INT8 0.87 MB, pruned INT8 0.23 MB
    profile = tmp_path / "tiny-flash.yaml"
    profile.write_text(yaml.safe_dump(tiny))
    err = fails(cli, "digits_cnn", "--profile", profile, "--recipe", RECIPES / "digits_int8_static.yaml",
                "--out", tmp_path / "o")  # fmt: skip
    assert "ModelTooLarge" in err and "max_model_mb 0.5" in err and not (tmp_path / "o").exists()
    report = package_json(cli, "digits_cnn", "--profile", profile, "--auto", "--out", tmp_path / "a")
    rows = {c["name"]: c for c in report["candidates"]}
    assert rows[report["chosen"]]["size_bytes"] <= 0.5 * 2**20
    assert rows["onnxruntime-int8-static"]["status"] == "over-budget"


def test_the_profiles_latency_budget_filters_auto_and_is_a_warning_for_a_recipe(cli, tmp_path):
    """No model runs in a nanosecond: under --auto every candidate is measurably over the budget (the reason
    says it is this host's figure) and nothing is chosen; a recipe packages and says so."""
    import yaml

    from edgekit.profiles import load_profile

    fast = load_profile("x86-64-generic").model_dump(mode="json", exclude_none=True)
    fast |= {"name": "one-ns", "latency_budget_ms": 1e-6}
    profile = tmp_path / "one-ns.yaml"
    profile.write_text(yaml.safe_dump(fast))
    only = "onnxruntime-fp32,onnxruntime-int8-dynamic"
    err = fails(cli, "digits_cnn", "--profile", profile, "--auto", "--only", only, "--out", tmp_path / "a")
    assert "NoCandidate" in err and err.count("over-latency-budget") == 2 and "on this host" in err, err
    assert not (tmp_path / "a").exists()
    code, _, err = cli("package", "digits_cnn", "--profile", profile, "--recipe", RECIPES / "digits_int8_static.yaml",
                       "--out", tmp_path / "r")  # fmt: skip
    assert (
        code == 0
        and "over the profile's latency_budget_ms" in " ".join(err.split())
        and (tmp_path / "r" / "report.json").exists()
    )


def test_auto_for_a_profile_of_another_architecture_says_the_ranking_is_the_hosts(cli, tmp_path):
    import platform

    code, _, err = cli("package", "digits_cnn", "--profile", "rpi4", "--auto", "--only", "onnxruntime-int8-dynamic",
                       "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    said = "the ranking is this x86_64 host's, not the aarch64 device's: add --measure-on" in " ".join(err.split())
    assert said == (platform.machine() == "x86_64"), err
