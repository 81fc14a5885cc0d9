"""Bench section ``ownmodels``: ten public architectures nobody here trained, written in code with random
init, each through ``edgekit package --auto`` for x86-64-generic as a user would bring it.

What is checked is the verdict, not speed: no internal error, every output's shape kept by the chosen
package, fidelity reported per output. torchvision's only wheel here is a CUDA build, so the vision nets
are written out (MobileNetV3-, ResNet-, EfficientNet-, U-Net-like); the transformers come from
``transformers`` configs (random init, no download).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.bench import header, log


def images(n: int, c: int, s: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(0).standard_normal((n, c, s, s)).astype(np.float32)}


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(),
                                nn.Conv2d(c // 4, c, 1), nn.Hardsigmoid())  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


def mbconv(cin: int, cout: int, expand: int, stride: int, act: type, se: bool) -> nn.Module:
    mid = cin * expand
    layers: list[nn.Module] = [
        nn.Conv2d(cin, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        act(),
        nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
        nn.BatchNorm2d(mid),
        act(),
    ]
    layers += [SE(mid)] if se else []
    layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.skip = nn.Sequential(*layers), stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.skip else self.body(x)

    return Block()  # fmt: skip


def mobilenet_v3() -> Any:
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish(),
                        mbconv(16, 16, 1, 2, nn.ReLU, True), mbconv(16, 24, 4, 2, nn.ReLU, False),
                        mbconv(24, 24, 3, 1, nn.ReLU, False), mbconv(24, 40, 3, 2, nn.Hardswish, True),
                        mbconv(40, 40, 3, 1, nn.Hardswish, True), nn.Conv2d(40, 96, 1), nn.Hardswish(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 128), nn.Hardswish(),
                        nn.Linear(128, 100))  # fmt: skip
    return net, images(16, 3, 64), {"output_kinds": {"output": "logits"}}


def efficientnet() -> Any:
    net = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.SiLU(),
                        mbconv(24, 24, 1, 1, nn.SiLU, True), mbconv(24, 32, 4, 2, nn.SiLU, True),
                        mbconv(32, 32, 4, 1, nn.SiLU, True), mbconv(32, 48, 4, 2, nn.SiLU, True),
                        nn.Conv2d(48, 192, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(0.2), nn.Linear(192, 50))  # fmt: skip
    return net, images(16, 3, 64), {}


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                               nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))  # fmt: skip
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) + self.down(x))


def resnet() -> Any:
    net = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), Basic(32, 32, 1),
                        Basic(32, 64, 2), Basic(64, 64, 1), Basic(64, 128, 2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(128, 10))  # fmt: skip
    return net, images(16, 3, 32), {"output_kinds": {"output": "logits"}}


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())  # fmt: skip

        self.e1, self.e2, self.mid = block(3, 16), block(16, 32), block(32, 64)
        self.up2, self.d2 = nn.ConvTranspose2d(64, 32, 2, 2), block(64, 32)
        self.up1, self.d1 = nn.ConvTranspose2d(32, 16, 2, 2), block(32, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(nn.functional.max_pool2d(e1, 2))
        m = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([self.up2(m), e2], 1))
        return self.head(self.d1(torch.cat([self.up1(d2), e1], 1)))


def unet() -> Any:
    return UNet(), images(8, 3, 32), {}


def ctr() -> Any:
    net = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 1),
                        nn.Sigmoid())  # fmt: skip
    return net, {"features": np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)}, {}


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.box = nn.Linear(128, 4)
        self.trunk = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1),
                                   nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 128),
                                   nn.ReLU())  # fmt: skip
        self.cls = nn.Linear(128, 20)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.cls(h), self.box(h)


def two_heads() -> Any:
    return TwoHeads(), images(16, 3, 32), {"output_names": ["classes", "box"]}


def kws() -> Any:  # keyword spotting on 40 MFCC bands x 98 frames, 1-D convolutions
    net = nn.Sequential(nn.Conv1d(40, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU(),
                        nn.Conv1d(64, 64, 3, padding=1, groups=64), nn.Conv1d(64, 96, 1), nn.BatchNorm1d(96),
                        nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(96, 12))  # fmt: skip
    return net, {"mfcc": np.random.default_rng(0).standard_normal((16, 40, 98)).astype(np.float32)}, {}


def text(config_cls: Any, **kw: Any) -> Any:
    from transformers import AutoModel

    torch.manual_seed(0)
    inner = AutoModel.from_config(config_cls(**kw), attn_implementation="eager")

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, (16, 32)).astype(np.int64)
    return Encoder(), {"ids": ids, "mask": np.ones_like(ids)}, {
        "model_type": "transformer", "dynamic_axes": {"ids": {1: "seq"}, "mask": {1: "seq"}}}  # fmt: skip


def bert() -> Any:
    from transformers import BertConfig

    return text(BertConfig, vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=256, max_position_embeddings=64)  # fmt: skip


def distilbert() -> Any:
    from transformers import DistilBertConfig

    return text(DistilBertConfig, vocab_size=1000, dim=128, n_layers=2, n_heads=2, hidden_dim=256,
                max_position_embeddings=64)  # fmt: skip


def _seeded(factory: Any) -> Any:
    def build() -> Any:
        torch.manual_seed(0)
        return factory()

    return build


def _vit() -> Any:
    from transformers import ViTConfig, ViTModel

    inner = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=96, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=192), add_pooling_layer=False)  # fmt: skip

    class Vit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.head = inner, nn.Linear(96, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.inner(pixel_values=x).last_hidden_state[:, 0])

    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    return Vit(), {"image": x}, {"model_type": "transformer"}


#: name -> factory returning (module, inputs, options): the own-model contract (docs/own-models.md)
NETS = {name: _seeded(f) for name, f in {
    "mobilenet_v3_like": mobilenet_v3, "resnet_like": resnet, "efficientnet_like": efficientnet, "unet_like": unet,
    "ctr_sigmoid": ctr, "two_heads": two_heads, "kws_conv1d": kws, "bert_small": bert,
    "distilbert_small": distilbert, "vit_tiny": _vit}.items()}  # fmt: skip


def _one(name: str, factory: Any, out: Path) -> dict[str, Any]:
    from edgekit.build import run_package
    from edgekit.errors import EdgekitError
    from edgekit.hostrt import predictor
    from edgekit.modelsrc import own_model

    row: dict[str, Any] = {"model": name}
    t0 = time.perf_counter()
    try:
        bundle = own_model(f"bench:{name}", factory())
        row["params"] = sum(p.numel() for p in bundle.module.parameters())
        result = run_package(bundle, profile="x86-64-generic", auto=True, out=out)
    except EdgekitError as exc:
        return row | {"outcome": exc.one_line(), "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as exc:  # what this section is looking for: an internal error on a model nobody here wrote
        return row | {
            "outcome": f"INTERNAL {type(exc).__name__}: {exc}"[:300],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    from edgekit.artifact import Artifact

    entry = json_load(out / "report.json")["package"]["model"]["entry"]
    kind = "onnx" if entry.endswith(".onnx") else "openvino"
    original = predictor(Artifact(kind="torch", module=bundle.module), threads=1)(bundle.example)
    packaged = predictor(Artifact(kind=kind, path=out / entry), threads=1)(bundle.example)
    last = result.steps[-1]
    fid = {k.removesuffix(".fidelity"): round(v, 4) for k, v in last.extra_metrics.items() if k.endswith(".fidelity")}
    ok = sum(1 for c in result.candidates or [] if c["status"] == "ok")
    return row | {
        "outcome": "packaged",
        "chosen": result.chosen,
        "candidates_ok": f"{ok}/{len(result.candidates or [])}",
        "not_ok": {
            c["name"]: f"{c['status']} {c['reason']}"[:160] for c in result.candidates or [] if c["status"] != "ok"
        },
        "shapes_kept": [o.shape for o in packaged] == [o.shape for o in original],
        "outputs": [list(o.shape) for o in original],
        "fidelity": fid,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def json_load(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def run(*, quick: bool = False) -> dict[str, Any]:  # not part of the quick run
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-own-") as tmp:
        for name, factory in NETS.items():
            log(f"own model {name}")
            rows.append(_one(name, factory, Path(tmp) / name))
            log(f"  {rows[-1]}")
    return {"rows": rows}


def render(res: dict[str, Any]) -> list[str]:
    lines = ["## Models nobody here wrote (`--auto` on x86-64-generic)", "", header(res), "",
             "Random init, inputs from a seeded normal distribution (ids for the transformers); every output",
             "compared with the original's by its kind (docs/own-models.md). *shapes kept*: the packaged model's",
             "outputs have the original's shapes on the same inputs.", "",
             "| model | params | outputs | outcome | chosen | ok candidates | shapes kept | fidelity per output | s |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    notes = []
    for r in res["rows"]:
        fid = ", ".join(f"{k} {v:.4f}" for k, v in (r.get("fidelity") or {}).items())
        lines.append(f"| {r['model']} | {r.get('params', 0):,} | {r.get('outputs', '-')} | {r['outcome']} | "
                     f"{r.get('chosen', '-')} | {r.get('candidates_ok', '-')} | {r.get('shapes_kept', '-')} | "
                     f"{fid or '-'} | {r['seconds']} |")  # fmt: skip
        notes += [f"- {r['model']}: " + "; ".join(f"{k} {v}" for k, v in r.get("not_ok", {}).items())]
    return [*lines, "", "Candidates that were not ok, and why:", "", *notes]
