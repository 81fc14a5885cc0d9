"""``make bench``: acceptance figures measured on this machine, written to docs/benchmarks.md.

Each section (``--only packager,package``) stores its raw results in docs/bench-results/SECTION.json;
benchmarks.md is rendered from every stored section, so re-running one section keeps the others' numbers
(each with its own date and machine line). Latency ratios that compare two separately built models are
re-measured here *interleaved* (round robin, same process, same threads), because the machine is shared
and a number taken minutes apart is not comparable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "models" / "recipes"


def interleaved_p50(
    predictors: dict[str, Any], feed: dict[str, np.ndarray], *, rounds: int = 40, per_round: int = 50
) -> dict[str, float]:
    """Median latency (ms) of each predictor, measured in alternating rounds so drift hits all equally."""
    samples: dict[str, list[float]] = {name: [] for name in predictors}
    for predict in predictors.values():
        for _ in range(20):
            predict(feed)
    for _ in range(rounds):
        for name, predict in predictors.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                predict(feed)
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: float(np.median(v)) for name, v in samples.items()}


def machine() -> str:
    from edgekit.profiles import _cpu_name

    system = f"{platform.system()} {platform.release()}"
    return f"{_cpu_name()}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def log(msg: str) -> None:
    print(f"· {msg}", file=sys.stderr, flush=True)


def header(res: dict[str, Any]) -> str:
    return f"Measured {res['date']} on {res['machine']} with `{res['command']}`."


def run_packager() -> dict[str, Any]:
    from edgekit.artifact import Artifact
    from edgekit.build import run_package
    from edgekit.hostrt import predictor
    from edgekit.modelsrc import load_model

    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "fp32.yaml"
        fp32.write_text("name: ort-fp32\nruntime: onnxruntime\npasses: []\n")
        digits = load_model("digits_cnn")
        runs = {
            "digits_fp32": ("digits_cnn", fp32),
            "digits_int8_static": ("digits_cnn", RECIPES / "digits_int8_static.yaml"),
            "digits_prune50": ("digits_cnn", RECIPES / "digits_prune50.yaml"),
            "digits_prune50_int8": ("digits_cnn", RECIPES / "digits_prune50_int8.yaml"),
            "recommender_int8": ("recommender", RECIPES / "recommender_int8_dynamic.yaml"),
        }
        reports = {}
        for key, (model, recipe) in runs.items():
            log(f"{key}")
            bundle = digits if model == "digits_cnn" else model
            reports[key] = run_package(
                bundle, profile="x86-64-generic", recipe=recipe, out=tmp / key, progress=log
            ).to_json()
        log("minilm --auto")
        reports["minilm_auto"] = run_package(
            "minilm", profile="x86-64-generic", auto=True, out=tmp / "minilm", progress=log
        ).to_json()
        log("interleaved latency of the digits ONNX models")
        models = {
            k: Artifact(kind="onnx", path=tmp / k / "model.onnx")
            for k in ("digits_fp32", "digits_int8_static", "digits_prune50", "digits_prune50_int8")
        }
        lat = interleaved_p50({k: predictor(a, threads=2) for k, a in models.items()}, digits.example)
        res["digits_interleaved_p50_ms"] = lat
        res["reports"] = reports
    return res


def _step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["name"] == name)


def render_packager(res: dict[str, Any]) -> list[str]:
    r = res["reports"]
    lat = res["digits_interleaved_p50_ms"]
    base = _step(r["digits_fp32"], "baseline")
    lines = [
        "## Packager acceptance (issue 3)",
        "",
        header(res) + " Latency: batch as in each model's example (digits: 1 image,",
        "recommender: one query of 20 candidates, MiniLM: 1 sentence padded to 128 tokens), 2 threads, warm-up",
        "excluded. Ratios compare numbers taken in one run; the digits ONNX latencies are re-measured",
        "interleaved (round robin).",
        "",
        "### digits_cnn on x86-64-generic (ONNX Runtime CPU)",
        "",
        "| model | accuracy | drop (pp) | size | size vs fp32 | p50 ms (interleaved) | speed-up vs ORT fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    fp32_size = _step(r["digits_fp32"], "export_onnx")["size_bytes"]
    for key, label in [
        ("digits_fp32", "ORT fp32"),
        ("digits_int8_static", "ORT INT8 static per-channel"),
        ("digits_prune50", "50% structured pruning + fine-tune, fp32"),
        ("digits_prune50_int8", "50% structured pruning + INT8 static"),
    ]:
        last = r[key]["steps"][-1]
        lines.append(
            f"| {label} | {last['metric']:.4f} | {100 * (base['metric'] - last['metric']):.2f} | "
            f"{last['size_bytes'] / 1024:.0f} kB | {fp32_size / last['size_bytes']:.2f}x | {lat[key]:.4f} | "
            f"{lat['digits_fp32'] / lat[key]:.2f}x |"
        )
    lines += [
        "",
        f"torch fp32 eager (baseline step): accuracy {base['metric']:.4f}, p50 {base['latency_ms']:.3f} ms.",
        "",
        "### recommender (DLRM-style ranker), INT8 dynamic on ONNX Runtime",
        "",
        "| step | NDCG@10 | relative drop | AUC | size | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for s in r["recommender_int8"]["steps"]:
        lines.append(
            f"| {s['name']} | {s['metric']:.4f} | {s['performance_drop']:.2%} | "
            f"{s['extra_metrics'].get('auc', float('nan')):.4f} | "
            f"{s['size_bytes'] / 2**20:.2f} MB | {s['latency_ms']:.3f} |"
        )
    m = r["minilm_auto"]
    torch_lat = m["steps"][0]["latency_ms"]
    lines += [
        "",
        "### MiniLM-L6 `--auto` (seq 128, batch 1, 2 threads)",
        "",
        f"torch fp32 eager: p50 {torch_lat:.2f} ms. Chosen: **{m['chosen']}** ({m['runtime']}, {m['precision']}).",
        "",
        "| candidate | cosine to fp32 | p50 ms | speed-up vs torch fp32 | size | status |",
        "|---|---|---|---|---|---|",
    ]
    for c in m["candidates"]:
        if c["latency_ms"] is None:
            lines.append(f"| {c['name']} | - | - | - | - | {c['status']} {c['reason']} |")
            continue
        lines.append(
            f"| {c['name']} | {c['metric']:.4f} | {c['latency_ms']:.2f} | {torch_lat / c['latency_ms']:.2f}x | "
            f"{c['size_bytes'] / 2**20:.1f} MB | {c['status']} {c['reason']} |"
        )
    return lines


def _sections() -> dict[str, tuple[Any, Any]]:
    from edgekit import bench_agent, bench_fleet, bench_package, bench_scaling

    return {
        "packager": (run_packager, render_packager),
        "package": (bench_package.run, bench_package.render),
        "agent": (bench_agent.run, bench_agent.render),
        "fleet": (bench_fleet.run, bench_fleet.render),
        "scaling": (bench_scaling.run, bench_scaling.render),
    }


def run(sections: list[str], out_md: Path, results_dir: Path) -> None:
    known = _sections()
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in sections:
        log(f"section {name}")
        res = {"machine": machine(), "date": dt.date.today().isoformat(), "command": f"make bench ({name})"}
        res |= known[name][0]()
        (results_dir / f"{name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    lines = ["# Benchmarks", ""]
    lines += [
        "Written by `make bench` (`python -m edgekit.bench [--only SECTION,...]`); raw numbers in",
        "`docs/bench-results/SECTION.json`. Every figure below was measured by that command on the machine named",
        "in its section; ratios compare numbers taken in the same run.",
    ]
    for name, (_, render) in known.items():
        stored = results_dir / f"{name}.json"
        if stored.exists():
            lines += ["", *render(json.loads(stored.read_text()))]
    out_md.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "bench-results")
    parser.add_argument("--only", default=None, help="comma-separated sections (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("EDGEKIT_LATENCY_SECONDS", "2")
    sections = args.only.split(",") if args.only else list(_sections())
    unknown = set(sections) - set(_sections())
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; known: {list(_sections())}")
    run(sections, args.out, args.results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
