"""prune_transformer on a tiny BERT (random init, built from a transformers config): heads and FFN neurons
really leave the graph, the output's shape stays, distillation from the unpruned model recovers fidelity,
and the counts in the step match the exported graph's."""

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


def test_heads_and_neurons_leave_the_graph_and_distillation_recovers(tiny_bert, tmp_path):
    pruned, ctx = run(tiny_bert, tmp_path / "a", heads=0.75, ffn=0.75)
    assert pruned.notes["layers"] == [{"heads": 1, "ffn": 64}] * 2
    enc = pruned.module.transformer.encoder.layer[0]
    assert enc.attention.self.query.out_features == 16 and enc.intermediate.dense.out_features == 64
    assert torch_params(pruned.module) < torch_params(tiny_bert.module)
    teacher = predictor(Artifact(kind="torch", module=tiny_bert.module), threads=1)

    def error(art) -> float:  # relative to the unpruned model, on samples distillation never saw
        return float(np.mean([np.linalg.norm(predictor(art, threads=1)(f)[0] - teacher(f)[0])
                              / np.linalg.norm(teacher(f)[0]) for f in tiny_bert.eval_feeds]))  # fmt: skip

    recovered, _ = run(tiny_bert, tmp_path / "b", heads=0.75, ffn=0.75, distill_steps=100, lr=1e-4)
    assert predictor(recovered, threads=1)(tiny_bert.eval_feeds[0])[0].shape == (1, 64)
    before, after = error(pruned), error(recovered)
    assert after < 0.75 * before, (before, after)
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
