"""Packaging a GGUF language model: the fp32 reference equals transformers' dequantization, the text parts never
overlap, the CLI writes a signed package whose sample a device can repeat, bad input is one line, the gate
and --auto's choice follow the measured figures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgekit.llm import build, evaluate, text
from edgekit.llm.compress import LLMRecipe
from edgekit.runtimes import genai

pytestmark = pytest.mark.integration


def test_the_fp32_reference_ir_computes_what_transformers_dequantization_of_the_gguf_computes(tiny_llm, tmp_path):
    import openvino as ov
    import torch
    from transformers import AutoModelForCausalLM

    info = genai.from_gguf(tiny_llm["gguf"], tmp_path / "fp32")
    assert info.arch == "llama" and info.tensor_types.get("Q4_1") and info.params > 3_000_000
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llm["gguf"].parent, gguf_file=tiny_llm["gguf"].name, dtype=torch.float32
    )
    ids = np.array([[1, 504, 3458, 282, 4649, 314, 99, 7]], dtype=np.int64)
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits.numpy()
    settings = genai.plugin_settings(1, genai.REFERENCE_CONFIG)
    compiled = ov.Core().compile_model(str(tmp_path / "fp32" / genai.MODEL_XML), "CPU", settings)
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(ids.shape[1])[None],
        "beam_idx": np.zeros(1, dtype=np.int32),
    }
    got = compiled.create_infer_request().infer(feed)["logits"]
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    # the file's own Q4_1 weights, kept compressed (u4, f16 scales and exact f16 zero points): the same model
    # up to f16 rounding in the decompression (the reader alone rounds each block minimum to 4 bits: 0.96 here)
    genai.from_gguf(tiny_llm["gguf"], tmp_path / "native", native=True)
    compiled = ov.Core().compile_model(str(tmp_path / "native" / genai.MODEL_XML), "CPU", settings)
    native = compiled.create_infer_request().infer(feed)["logits"]
    assert np.abs(native - expected).max() < 0.02 * np.abs(expected).max()


def test_calibration_and_heldout_text_come_from_different_sources_and_never_share_a_sentence():
    heldout, calibration = text.heldout_paragraphs(), text.calibration_paragraphs()
    assert len(heldout) > 200 and len(calibration) > 100
    assert text.overlap() == set()
    windows = text.windows(heldout, lambda s: list(range(len(s.split()))), count=3, length=50, bos=1)
    assert len(windows) == 3 and all(len(w) == 50 and w[0] == 1 for w in windows)


def test_the_cli_writes_a_signed_generative_package_with_its_step_table_and_greedy_sample(tiny_llm, cli):
    from edgekit_agent.runtimes import get

    result, report = tiny_llm["result"], tiny_llm["report"]
    assert result["runtime"] == "openvino-genai:CPU" and result["chosen"] == "int8" and result["precision"] == "int8"
    ref, step = result["steps"]
    assert ref["metric_name"] == "perplexity" and ref["metric"] > 1 and step["gate"] == "pass"
    assert step["size_bytes"] < ref["size_bytes"] and step["params"] == ref["params"] > 3_000_000
    assert step["extra_metrics"]["decode_tokens_per_s"] > 0 and step["extra_metrics"]["ttft_ms"] > 0
    assert abs(step["performance_drop"] - (step["metric"] / ref["metric"] - 1)) < 1e-9
    assert report["llm"]["heldout_tokens"] > 500 and report["package"]["sample"]["rtol"] == build.SAMPLE_RTOL
    # the sample: the device repeats the greedy tokens the host generated from the prompt ids
    prompt = np.load(tiny_llm["out"] / "sample/prompt_ids.npy")
    tokens = np.load(tiny_llm["out"] / "sample/tokens.npy")
    gen = get("openvino-genai").open_generator(
        tiny_llm["out"] / "openvino_model.xml", "CPU", threads=1, config=report["runtime_config"]
    )
    assert gen.generate(prompt.tolist(), max_new_tokens=len(tokens), ignore_eos=True).tokens == tokens.tolist()
    code, out, err = cli("verify", tiny_llm["package"], "--trust", tiny_llm["keys"][1])
    assert code == 0, err
    code, out, _ = cli("inspect", tiny_llm["package"])
    assert code == 0 and "openvino-genai" in out


def test_bad_input_is_one_line_naming_the_fix(tiny_llm, cli, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF but not really" * 10)
    recipe = tmp_path / "r.yaml"
    cases = [
        ((bogus, "--profile", "x86-64-generic", "--auto"), "ModelInvalid", "not a readable GGUF"),
        ((tmp_path / "none.gguf", "--profile", "x86-64-generic", "--auto"), "ModelNotFound", "no such GGUF"),
        ((tiny_llm["gguf"], "--profile", "rpi-zero-2w", "--auto"), "ProfileInvalid", "openvino:CPU"),
        ((tiny_llm["gguf"], "--profile", "x86-64-generic", "--auto", "--only", "x"), "OptionInvalid", "--only"),
        ((tiny_llm["gguf"], "--profile", "x86-64-generic", "--recipe", recipe), "RecipeInvalid", "apply to int4"),
    ]
    recipe.write_text("name: r\nweights: int8_asym\ngroup_size: 64\n")
    for args, kind, needle in cases:
        code, _out, err = cli("package", *args, "--out", tmp_path / "out")
        assert code == 2 and kind in err and needle in err and "Traceback" not in err, (args, err)
        assert len([line for line in err.splitlines() if line.startswith("error")]) == 1, err
    assert not (tmp_path / "out").exists()
    recipe.write_text("name: r\nweights: int4_asym\ngroup_size: 48\n")  # 48 divides no channel count of 64
    code, _out, err = cli(
        "package", tiny_llm["gguf"], "--profile", "x86-64-generic", "--recipe", recipe, "--out", tmp_path / "out"
    )
    assert (
        code == 2
        and "group_size 48 does not divide the model's input channels (64 and 128)" in err
        and not (tmp_path / "out").exists()
    )


def _candidate(name: str, weights: str, ppl: float, rates: tuple[float, float], size: int) -> build.Candidate:
    c = build.Candidate(LLMRecipe(name=name, weights=weights), directory=None, perplexity=ppl, size_bytes=size)  # type: ignore[arg-type]
    c.speed = evaluate.Speed(
        ttft_ms=10.0,
        decode_tokens_per_s=sum(rates) / 2,
        decode_interval=rates,
        prompt_tokens=128,
        new_tokens=128,
        runs=3,
    )
    return c


def test_the_gate_and_the_choice_follow_perplexity_speed_intervals_and_size(x86):
    ref = _candidate("fp32", "fp32", 20.0, (30.0, 32.0), 500)
    fast_bad = _candidate("int4", "int4_asym", 23.0, (90.0, 95.0), 80)  # +15 %: over the 5 % tolerance
    fast = _candidate("int8", "int8_asym", 20.4, (60.0, 64.0), 130)
    tied_smaller = _candidate("gguf", "gguf", 20.1, (58.0, 61.0), 90)  # overlaps int8's range and is smaller
    slower = _candidate("int4s", "int4_sym", 20.2, (10.0, 12.0), 70)  # measurably slower than fp32
    for c in (fast_bad, fast, tied_smaller, slower):
        build._gate(c, ref.perplexity, x86)
    assert fast_bad.status == "over-tolerance" and "+15.0%" in fast_bad.reason
    assert build.choose([ref, fast_bad, fast, tied_smaller, slower], ref) is tied_smaller
    assert slower.status == "slower-than-fp32"
    huge = _candidate("big", "int8_asym", 20.0, (100.0, 101.0), 10**12)
    build._gate(huge, ref.perplexity, x86)
    assert huge.status == "too-large"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGEKIT_LLM_SLOW"), reason="opt-in: EDGEKIT_LLM_SLOW=1 (SmolLM2-135M, ~3 min)")
def test_smollm2_in_int4_keeps_its_perplexity_and_its_answer(tmp_path):
    """The real model end to end (make bench measures it side by side with llama.cpp and torch)."""
    result = build.run_llm_package(
        "smollm2", profile="x86-64-generic", recipe={"name": "int4", "weights": "int4_asym", "group_size": 32},
        out=tmp_path / "pkg", measures=build.Measures(),
    )  # fmt: skip
    ref, step = result.steps
    assert 10 < ref.metric < 60 and step.performance_drop < 0.05 and step.size_bytes < ref.size_bytes / 4
    report = json.loads((tmp_path / "pkg" / "report.json").read_text())
    gen = genai.open_generator(tmp_path / "pkg", threads=2, config=report["runtime_config"])
    prompt = gen.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in gen.generate(gen.encode(prompt), max_new_tokens=16).text
