"""``make bench``: acceptance figures measured on this machine, written to docs/benchmarks.md.

Each section (``--only models,agent``) stores its raw results in docs/bench-results/SECTION.json;
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
import time
from pathlib import Path
from typing import Any

from edgekit.bench import ROOT, isa, log, machine

QUICK = ("models", "agent", "fleet")  # packaging time and NATS scaling take minutes by nature


def _sections() -> dict[str, Any]:
    """name -> module with ``run() -> dict`` and ``render(dict) -> lines`` (and optionally ``plot``)."""
    from edgekit.bench import agent, devicerank, fleet, llm, models, ownmodels, package, scaling

    return {"models": models, "ownmodels": ownmodels, "package": package, "agent": agent, "fleet": fleet,
            "scaling": scaling, "devicerank": devicerank, "llm": llm}  # fmt: skip


def run(sections: list[str], out_md: Path, results_dir: Path, *, quick: bool = False) -> None:
    known = _sections()
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in sections:
        log(f"section {name}")
        t0 = time.perf_counter()
        command = "make bench-quick" if quick else "make bench"
        res = {
            "machine": machine(),
            "cpu_flags": isa(),
            "date": dt.date.today().isoformat(),
            "command": f"{command} ({name})",
        }
        res |= known[name].run(quick=quick)
        res["section_seconds"] = round(time.perf_counter() - t0, 1)
        (results_dir / f"{name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    lines = ["# Benchmarks" + (" (quick)" if quick else ""), ""]
    shown = os.path.relpath(results_dir, ROOT) if results_dir.is_relative_to(ROOT) else str(results_dir)
    lines += [
        f"Written by `{'make bench-quick' if quick else 'make bench'}` (`python -m edgekit.bench"
        f"{' --quick' if quick else ''} [--only SECTION,...]`); raw numbers in `{shown}/SECTION.json`.",
        "Every figure below was measured by that command on the machine named in its section; ratios compare",
        "numbers taken in the same run.",
    ]
    if quick:
        lines += ["", "Quick run: fewer repetitions, smaller transfers and fleets, digits only; see "
                  "docs/benchmarks.md for the full run."]  # fmt: skip
    timing = []
    for name, module in known.items():
        if quick and name not in QUICK:
            continue
        stored = results_dir / f"{name}.json"
        if not stored.exists():
            continue
        res = json.loads(stored.read_text())
        lines += ["", *module.render(res)]
        if hasattr(module, "plot"):
            for png in module.plot(res, results_dir):
                lines += ["", f"![{png.stem}]({os.path.relpath(png, out_md.parent)})"]
        if "section_seconds" in res:
            timing.append(f"{name} {res['section_seconds']:.0f} s ({res['date']})")
    if timing:
        lines += ["", "## How long each section took", "", "; ".join(timing) + "."]
    out_md.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--only", default=None, help="comma-separated sections (default: all)")
    parser.add_argument("--quick", action="store_true", help="the ~3-minute subset (make bench-quick)")
    args = parser.parse_args()
    os.environ.setdefault("EDGEKIT_LATENCY_SECONDS", "1" if args.quick else "2")
    out = args.out or ROOT / "docs" / ("benchmarks-quick.md" if args.quick else "benchmarks.md")
    results = args.results or ROOT / "docs" / "bench-results" / ("quick" if args.quick else "")
    sections = args.only.split(",") if args.only else (list(QUICK) if args.quick else list(_sections()))
    unknown = set(sections) - set(_sections())
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; known: {list(_sections())}")
    run(sections, out, results, quick=args.quick)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
