"""``edgekit demo``: the end-to-end walk-through on real models, trained here, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli._console import err, out, stdout_to_stderr


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="where the demo writes its outputs")] = Path("demo-out"),
) -> None:
    """Train the digits CNN, prune + quantize it for x86-64-generic, and show the per-step report."""
    from edgekit.build import run_package
    from edgekit.cli.package import render_candidates, render_steps

    recipes = Path(__file__).resolve().parents[2] / "models" / "recipes"
    runs = [
        ("digits_cnn", recipes / "digits_int8_static.yaml", "digits-int8"),
        ("digits_cnn", recipes / "digits_prune50_int8.yaml", "digits-prune50-int8"),
        ("recommender", recipes / "recommender_int8_dynamic.yaml", "recommender-int8"),
    ]
    for model, recipe, name in runs:
        err.rule(f"{model}: {recipe.name}")
        with stdout_to_stderr():
            result = run_package(
                model,
                profile="x86-64-generic",
                recipe=recipe,
                out=out_dir / name,
                progress=lambda m: err.print(f"· {m}"),
            )
        out.print(render_steps(result))
    err.rule("digits_cnn: --auto")
    with stdout_to_stderr():
        result = run_package(
            "digits_cnn",
            profile="x86-64-generic",
            auto=True,
            out=out_dir / "digits-auto",
            progress=lambda m: err.print(f"· {m}"),
        )
    out.print(render_candidates(result.candidates or []))
    out.print(render_steps(result))
    out.print(f"demo outputs in {out_dir.resolve()}", highlight=False)
