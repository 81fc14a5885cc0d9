"""Bench section ``package``: sign and verify a ~100 MB package; show that verification reads it once.

The model is real (an ONNX MatMul + Add with a 5000x5000 fp32 weight, run by ONNX Runtime for the sample),
packaged by the same staging and signing code as ``edgekit package --key``. The baseline is the cheapest
possible check of the same file: one sha256 pass over it. Bytes read come from the OS (``psutil``'s
read_chars), not from the verifier's own counter.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench import header, log
from edgekit.fleet.serve import sha256_file

SIDE = 5000  # 5000 x 5000 float32 = 100 MB of weights


def _model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((SIDE, SIDE), dtype=np.float32) / SIDE, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SIDE])],
        [weight, numpy_helper.from_array(np.ones(SIDE, np.float32), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _timed(fn: Any, repeat: int = 3) -> tuple[float, int]:
    """Median seconds of ``fn`` and the bytes the OS says this process read during one call."""
    import psutil

    proc = psutil.Process()
    times, reads = [], []
    for _ in range(repeat):
        before = proc.io_counters().read_chars
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        reads.append(proc.io_counters().read_chars - before)
    return statistics.median(times), int(statistics.median(reads))


def run(*, quick: bool = False) -> dict[str, Any]:  # quick: not part of the quick run
    from edgekit_agent.trust import TrustStore
    from edgekit_agent.verify import verify_package

    from edgekit.artifact import Artifact
    from edgekit.build import stage_files
    from edgekit.bundle import ModelBundle
    from edgekit.edgepkg import Signing, write_edgepkg
    from edgekit.keys import init_keys

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log(f"building a {SIDE}x{SIDE} fp32 ONNX model")
        _model(tmp / "big.onnx")
        bundle = ModelBundle(
            name="big",
            task="custom",
            input_names=["x"],
            output_names=["y"],
            example={"x": np.ones((1, SIDE), np.float32)},
            calibration=[],
            eval_feeds=[],
            metric_name="none",
            score=lambda _o: 0.0,
        )
        src = tmp / "src"
        src.mkdir()
        spec = stage_files(src, Artifact(kind="onnx", path=tmp / "big.onnx"), bundle, threads=2)
        report = {"model": "big", "profile": "x86-64-generic", "runtime": "onnxruntime:CPUExecutionProvider"}
        report |= {"precision": "fp32", "steps": [], "package": spec}
        (src / "report.json").write_text(json.dumps(report))
        key = init_keys(tmp / "keys").private_path
        trust = TrustStore.load([tmp / "keys"])
        issued = datetime.now(UTC).replace(microsecond=0)
        log("signing")
        t0 = time.perf_counter()
        pkg = write_edgepkg(src, tmp / "big.edgepkg", Signing(key=key, counter=1, issued_at=issued)).path
        sign_s = time.perf_counter() - t0
        size = pkg.stat().st_size

        def sha_only() -> None:
            sha256_file(pkg)

        dests = iter(range(100))

        def unpack() -> None:
            verify_package(pkg, trust=trust, dest=tmp / f"v{next(dests)}")

        log("sha256 baseline, verify, verify + unpack")
        sha_s, sha_read = _timed(sha_only)
        verify_s, verify_read = _timed(lambda: verify_package(pkg, trust=trust))
        unpack_s, unpack_read = _timed(unpack)
    return {
        "package_bytes": size,
        "sign_s": sign_s,
        "sha256_s": sha_s,
        "sha256_read": sha_read,
        "verify_s": verify_s,
        "verify_read": verify_read,
        "unpack_s": unpack_s,
        "unpack_read": unpack_read,
    }


def render(res: dict[str, Any]) -> list[str]:
    mb = res["package_bytes"] / 1e6
    return [
        "## Package verification (issue 4)",
        "",
        header(res),
        f"A {mb:.1f} MB package (one 5000x5000 fp32 ONNX model + sample), median of 3. Bytes read are the OS's",
        "count for this process (read_chars) during the call.",
        "",
        "| operation | seconds | MB/s | bytes read / package size |",
        "|---|---|---|---|",
        *(
            f"| {label} | {res[k + '_s']:.3f} | {mb / res[k + '_s']:.0f} | "
            f"{res[k + '_read'] / res['package_bytes']:.3f} |"
            for k, label in [
                ("sha256", "sha256 of the file (lower bound: one read + hash)"),
                ("verify", "`edgekit verify` (signature, policy, every hash, ONNX external-data scan)"),
                ("unpack", "verify + unpack into a fresh directory (fsync'd), as the agent installs"),
            ]
        ),
        "",
        f"Signing (hash every file, write the tar, fsync): {res['sign_s']:.3f} s.",
    ]
