"""prune_transformer on a tiny BERT (random init, built from a transformers config): heads and FFN neurons
really leave the graph, the output's shape stays, the least-squares refit and distillation from the unpruned
model each recover fidelity, and the counts in the step match the exported graph's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgekit_models.minilm import SentenceEncoder

from edgekit.artifact import Artifact
from edgekit.errors import PassNotApplicable
from edgekit.evaluate import onnx_macs, onnx_params, torch_macs, torch_params
from edgekit.hostrt import predictor
from edgekit.modelsrc import fidelity_bundle
from edgekit.passes import REGISTRY, PassContext

SEQ = 16


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=SEQ, attn_implementation="eager")  # fmt: skip
    module = SentenceEncoder(BertModel(config)).eval()  # mean pooling, as the MiniLM example
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 200, size=(24, SEQ)).astype(np.int64)
    mask = np.ones_like(ids)
    for row, length in enumerate(rng.integers(4, SEQ + 1, size=24)):
        mask[row, length:] = 0
    return fidelity_bundle("tiny_bert", module=module, inputs={"input_ids": ids, "attention_mask": mask},
                           options={"model_type": "transformer"})  # fmt: skip


def run(bundle, tmp_path, **cfg):
    from edgekit.profiles import load_profile

    ctx = PassContext(profile=load_profile("x86-64-generic"), workdir=tmp_path, threads=2, static_shapes=False)
    art = Artifact(kind="torch", module=bundle.module)
    p = REGISTRY["prune_transformer"](REGISTRY["prune_transformer"].Config(type="prune_transformer", **cfg))
    p.check(bundle, art, ctx)
    return p.run(bundle, art, ctx), ctx


def test_heads_and_neurons_leave_the_graph_and_refit_and_distillation_recover(tiny_bert, tmp_path):
    pruned, ctx = run(tiny_bert, tmp_path / "a", heads=0.75, ffn=0.75, refit=False)
    assert pruned.notes["layers"] == [{"heads": 1, "ffn": 64}] * 2
    enc = pruned.module.transformer.encoder.layer[0]
    assert enc.attention.self.query.out_features == 16 and enc.intermediate.dense.out_features == 64
    assert torch_params(pruned.module) < torch_params(tiny_bert.module)
    teacher = predictor(Artifact(kind="torch", module=tiny_bert.module), threads=1)

    def error(art) -> float:  # relative to the unpruned model, on samples refit and distillation never saw
        return float(np.mean([np.linalg.norm(predictor(art, threads=1)(f)[0] - teacher(f)[0])
                              / np.linalg.norm(teacher(f)[0]) for f in tiny_bert.eval_feeds]))  # fmt: skip

    refitted, _ = run(tiny_bert, tmp_path / "b", heads=0.75, ffn=0.75)  # the refit is on by default
    recovered, _ = run(tiny_bert, tmp_path / "c", heads=0.75, ffn=0.75, refit=False, distill_steps=100, lr=1e-4)
    assert predictor(recovered, threads=1)(tiny_bert.eval_feeds[0])[0].shape == (1, 64)
    before = error(pruned)
    assert error(refitted) < 0.75 * before, (before, error(refitted))
    assert error(recovered) < 0.75 * before, (before, error(recovered))
    # exported, the graph really is smaller, and the counts agree with the torch module's
    export = REGISTRY["export_onnx"](REGISTRY["export_onnx"].Config(type="export_onnx"))
    onnx_art = export.run(tiny_bert, recovered, ctx)
    used = torch_params(recovered.module, tiny_bert.example)  # what the step table counts (not the unused pooler)
    assert abs(onnx_params(onnx_art.path) - used) <= 0.01 * used  # random-init LayerNorms (all ones) share one tensor
    macs_onnx, macs_torch = onnx_macs(onnx_art.path, tiny_bert.example), torch_macs(recovered.module, tiny_bert.example)
    assert abs(macs_onnx - macs_torch) <= 0.05 * macs_torch, (macs_onnx, macs_torch)
    full = REGISTRY["export_onnx"](REGISTRY["export_onnx"].Config(type="export_onnx")).run(
        tiny_bert, Artifact(kind="torch", module=tiny_bert.module), PassContext(
            profile=ctx.profile, workdir=tmp_path / "full", threads=2, static_shapes=False))  # fmt: skip
    assert onnx_macs(onnx_art.path, tiny_bert.example) < 0.75 * onnx_macs(full.path, tiny_bert.example)


def test_ffn_widths_stay_multiples_and_one_head_always_stays(tiny_bert, tmp_path):
    pruned, _ = run(tiny_bert, tmp_path, heads=0.9, ffn=0.3, multiple=32)
    assert all(layer["heads"] == 1 and layer["ffn"] % 32 == 0 and layer["ffn"] >= 0.7 * 256
               for layer in pruned.notes["layers"])  # fmt: skip


def test_a_model_without_bert_style_layers_is_refused_in_one_line(digits, tmp_path):
    with pytest.raises(PassNotApplicable, match="finds no BERT-style encoder layer in 'digits_cnn'"):
        run(digits, tmp_path, heads=0.5)


def test_batches_are_cut_to_their_longest_sentence_only_where_the_output_stays(tiny_bert):
    from edgekit.passes.prune_transformer import _batched, _tensors

    feeds = [_tensors(f) for f in tiny_bert.calibration]
    batches = _batched(tiny_bert, tiny_bert.module, feeds, 8)
    assert sum(len(b[0]) for b in batches) == len(feeds)
    lengths = [int(b[1].sum(1).max()) for b in batches]
    assert [b[0].shape[1] for b in batches] == lengths and lengths == sorted(lengths) and lengths[0] < SEQ
    order = sorted(range(len(feeds)), key=lambda i: int(feeds[i][1].sum()))  # batched shortest first
    with torch.no_grad():  # the cut batches give what the padded samples give, sample by sample
        cut = torch.cat([tiny_bert.module(*b) for b in batches])
        padded = torch.cat([tiny_bert.module(*feeds[i]) for i in order])
    torch.testing.assert_close(cut, padded, atol=1e-5, rtol=1e-4)

    class PerToken(torch.nn.Module):  # an output per position: cutting would change it, so nothing is cut
        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).float()

    kept = _batched(tiny_bert, PerToken(), feeds, 8)
    assert all(b[0].shape[1] == SEQ for b in kept)


def test_one_pruned_model_serves_every_runtime_of_a_search(tiny_bert, tmp_path):
    from edgekit.profiles import load_profile

    ctx = PassContext(profile=load_profile("x86-64-generic"), workdir=tmp_path, threads=2, static_shapes=False)
    art = Artifact(kind="torch", module=tiny_bert.module)
    cfg = {"type": "prune_transformer", "ffn": 0.5}
    first = REGISTRY["prune_transformer"](REGISTRY["prune_transformer"].Config(**cfg)).run(tiny_bert, art, ctx)
    again = REGISTRY["prune_transformer"](REGISTRY["prune_transformer"].Config(**cfg)).run(tiny_bert, art, ctx)
    other = REGISTRY["prune_transformer"](REGISTRY["prune_transformer"].Config(**cfg, heads=0.5)).run(
        tiny_bert, art, ctx)  # fmt: skip
    assert again.module is first.module and other.module is not first.module


def test_auto_tries_pruned_int8_candidates_on_both_runtimes_and_counts_them_from_the_graph(tiny_bert, digits,
                                                                                          tmp_path):  # fmt: skip
    from edgekit.auto import TRANSFORMER_PRUNINGS, candidates
    from edgekit.build import run_package
    from edgekit.profiles import load_profile

    x86 = load_profile("x86-64-generic")
    pruned = [f"{rt}-{label}-int8" for label, _ in TRANSFORMER_PRUNINGS for rt in ("onnxruntime", "openvino")]
    assert set(pruned) <= {r.name for r in candidates(tiny_bert, x86)}
    assert not any("prune-" in r.name for r in candidates(digits, x86))  # not a transformer: none
    result = run_package(tiny_bert, profile="x86-64-generic", auto=True, out=tmp_path / "o", only=pruned)
    rows = {c["name"]: c for c in result.candidates}
    assert set(rows) == {"onnxruntime-fp32", "openvino-fp32", *pruned}
    for name in pruned:
        if "heads8" in name:  # 1/12 of 4 heads rounds to none: a row that says so, not an unchanged model
            assert rows[name]["status"] == "not-applicable" and "removes nothing" in rows[name]["reason"], rows[name]
            continue
        assert rows[name]["precision"] == "int8", rows[name]
        assert rows[name]["status"] in {"ok", "over-tolerance", "slower-than-fp32"}, rows[name]
    # the step table's counts are the exported graph's: the pruned module's figures carry over to the export
    recipe = {"runtime": "onnxruntime", "tolerance": 0.99,
              "passes": [TRANSFORMER_PRUNINGS[-1][1], {"type": "quantize_ort", "mode": "dynamic"}]}  # fmt: skip
    steps = {s.name: s for s in run_package(tiny_bert, profile="x86-64-generic", recipe=recipe,
                                            out=tmp_path / "r").steps}  # fmt: skip
    assert steps["prune_transformer"].param_reduction > 0.05 and steps["prune_transformer"].compute_reduction > 0.05
    assert steps["export_onnx"].params == pytest.approx(steps["prune_transformer"].params, rel=0.01)
    assert steps["export_onnx"].macs == pytest.approx(steps["prune_transformer"].macs, rel=0.05)


def test_fractions_that_round_to_nothing_are_refused_not_packaged_unchanged(tiny_bert, tmp_path):
    with pytest.raises(PassNotApplicable, match=r"removes nothing from 'tiny_bert': 4 heads and 256 FFN neurons"):
        run(tiny_bert, tmp_path, heads=0.1, ffn=0.02)
