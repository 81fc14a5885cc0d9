"""``edgekit demo``: the end-to-end walk-through on real models, trained here, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli._console import err, out, stdout_to_stderr


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="where the demo writes its outputs")] = Path("demo-out"),
) -> None:
    """Train the example models, compress them for x86-64-generic, sign the packages and verify them as a
    device would (including a tampered copy, which must be refused)."""
    from edgekit.build import run_package
    from edgekit.cli.package import render_candidates, render_steps
    from edgekit.edgepkg import Signing
    from edgekit.keys import init_keys, show_key

    key_dir = out_dir / "keys"
    key = (show_key(key_dir) if (key_dir / "edgekit.pub").exists() else init_keys(key_dir)).private_path
    packages = []

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
                sign=Signing(key=key),
                progress=lambda m: err.print(f"· {m}"),
            )
        out.print(render_steps(result))
        packages.append(Path(result.package_path))
    err.rule("digits_cnn: --auto")
    with stdout_to_stderr():
        result = run_package(
            "digits_cnn",
            profile="x86-64-generic",
            auto=True,
            out=out_dir / "digits-auto",
            sign=Signing(key=key),
            progress=lambda m: err.print(f"· {m}"),
        )
    out.print(render_candidates(result.candidates or []))
    out.print(render_steps(result))
    packages.append(Path(result.package_path))
    _verify_like_a_device(packages, key_dir)
    out.print(f"demo outputs in {out_dir.resolve()}", highlight=False)


def _verify_like_a_device(packages: list[Path], key_dir: Path) -> None:
    from edgekit_agent.errors import PackageError
    from edgekit_agent.trust import TrustStore
    from edgekit_agent.verify import verify_package

    err.rule("verify the signed packages as a device does (edgekit_agent.verify)")
    trust = TrustStore.load([key_dir / "edgekit.pub"])
    for pkg in packages:
        m = verify_package(pkg, trust=trust, profile="x86-64-generic").manifest
        out.print(f"OK  {pkg.name}: {m.name} counter {m.counter}, {m.engine}:{m.device} {m.precision}", highlight=False)
    tampered = packages[0].with_name("tampered.edgepkg")
    data = bytearray(packages[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    try:
        verify_package(tampered, trust=trust, profile="x86-64-generic")
        raise SystemExit("demo: a tampered package was accepted; this is a bug")
    except PackageError as exc:
        out.print(f"REFUSED {tampered.name} (one bit flipped): {exc.one_line()}", highlight=False, markup=False)
    finally:
        tampered.unlink()
