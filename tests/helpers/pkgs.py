"""Real, small signed packages for the verifier's tests, and the means to build broken ones.

``source_dir`` lays out what ``edgekit package`` writes (a real ONNX model that ONNX Runtime runs, the
sample input and its real output, report.json); ``build`` signs it with the production writer. ``craft``
writes a package with any entries and any manifest, signed by any key, to build the bad-input catalogue.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ISSUED = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 23, tzinfo=UTC)
PROFILE = "x86-64-generic"


def tiny_onnx(*, external: str | None = None, size: int = 16, scale: float = 1.0) -> tuple[bytes, bytes | None]:
    """y = x @ (W * scale) + 1 with a real initializer; with ``external`` the weight lives in that side file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(size * size, dtype=np.float32).reshape(size, size) / size**2 * np.float32(scale)
    weight = numpy_helper.from_array(w, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "one"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, size])],
        [weight, numpy_helper.from_array(np.ones(size, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = None
    if external is not None:
        raw = weight.raw_data
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(len(raw)))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        model.graph.initializer[0].CopyFrom(weight)
        data = raw
    onnx.checker.check_model(model) if external is None else None
    return model.SerializeToString(), data


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def source_dir(
    root: Path,
    *,
    model: bytes | None = None,
    extra: dict[str, bytes] | None = None,
    scale: float = 1.0,
    expected_offset: float = 0.0,
    profile: str = "x86-64-generic",
) -> Path:
    """A directory shaped like ``edgekit package --out``: model.onnx, sample/, report.json.

    ``expected_offset`` shifts the sample's expected output: a package whose smoke test must fail.
    """
    model = model or tiny_onnx(scale=scale)[0]
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(model)
    (root / "sample").mkdir(exist_ok=True)
    x = np.linspace(0, 1, 16, dtype=np.float32)[None]
    w = np.arange(256, dtype=np.float32).reshape(16, 16) / 256 * np.float32(scale)
    (root / "sample" / "input_0.npy").write_bytes(npy(x))
    (root / "sample" / "output_0.npy").write_bytes(npy(x @ w + 1 + np.float32(expected_offset)))
    for rel, data in (extra or {}).items():
        (root / rel).write_bytes(data)
    files = sorted(["model.onnx", "sample/input_0.npy", "sample/output_0.npy", *(extra or {})])
    report = {
        "model": "tiny",
        "profile": profile,
        "runtime": "onnxruntime:CPUExecutionProvider",
        "precision": "fp32",
        "steps": [{"name": "baseline", "metric": 1.0}],
        "output_dir": str(root),
        "package": {
            "model": {"format": "onnx", "entry": "model.onnx"},
            "files": files,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 16]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 16]}],
            "sample": {
                "inputs": [{"name": "x", "file": "sample/input_0.npy"}],
                "outputs": [{"name": "y", "file": "sample/output_0.npy"}],
                "rtol": 0.01,
                "atol": 1e-5,
            },
            "preprocessing": {"x": "16 floats"},
            "postprocessing": {},
        },
    }
    (root / "report.json").write_text(json.dumps(report))
    return root


def keys(root: Path, name: str = "edgekit"):
    """(private key path, public key path) of a fresh key pair made by the production code."""
    from edgekit.keys import init_keys

    info = init_keys(root, name=name)
    return info.private_path, info.public_path


def build(src: Path, out: Path, key: Path, **kw) -> Path:
    from edgekit.edgepkg import Signing, write_edgepkg

    kw.setdefault("issued_at", ISSUED)
    kw.setdefault("counter", 7)
    return write_edgepkg(src, out, Signing(key=key, **kw)).path


def desired(tmp: Path, repo: Path, key: Path, name: str, counter: int, **src):
    """Build package ``name`` (version = name) into ``repo`` and return the desired message naming it."""
    from edgekit_agent.protocol import Desired

    from edgekit.fleet.serve import sha256_file

    path = build(source_dir(tmp / f"src-{name}", **src), repo / f"{name}.edgepkg", key, counter=counter, version=name)
    return Desired("tiny", name, sha256_file(path), counter, path.stat().st_size)


def members(package: Path) -> tuple[dict, list[tuple[str, bytes]]]:
    """(manifest object, [(name, bytes)] of the other entries) of a valid package."""
    from edgekit_agent.tarfmt import Reader

    with open(package, "rb") as fh:
        reader = Reader(fh)
        entries = [(n, b"".join(reader.read_data(s, n))) for n, s in reader.entries()]
    return json.loads(entries[0][1]), entries[2:]


def raw_tar(entries: list[tuple[str, bytes]]) -> bytes:
    """Canonical headers for any names (no safety checks: this is how an attacker writes one)."""
    from edgekit_agent.tarfmt import BLOCK, header

    out = bytearray()
    for name, data in entries:
        out += header(name, len(data)) + data + b"\0" * (-len(data) % BLOCK)
    return bytes(out + b"\0" * (2 * BLOCK))


def sign(manifest: dict, key: Path) -> tuple[bytes, bytes]:
    from edgekit_agent.manifest import dumps

    from edgekit.keys import load_signing_key

    data = dumps(manifest)
    return data, load_signing_key(key)[0].sign(data)


def craft(manifest: dict, files: list[tuple[str, bytes]], key: Path, *, sig: bool = True) -> bytes:
    """A package with exactly these entries after a (re-)signed manifest."""
    data, signature = sign(manifest, key)
    head = [("manifest.json", data)] + ([("manifest.sig", signature)] if sig else [])
    return raw_tar(head + files)


def relist(manifest: dict, files: list[tuple[str, bytes]]) -> dict:
    """The manifest with its file list recomputed for ``files`` (so only the tested defect remains)."""
    import hashlib

    out = json.loads(json.dumps(manifest))
    out["files"] = sorted(
        ({"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files),
        key=lambda f: f["path"],
    )
    return out


def later(days: int) -> datetime:
    return NOW + timedelta(days=days)


def members_from_bytes(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(manifest bytes, [(name, bytes)] of the entries after the signature) of a valid package's bytes."""
    from edgekit_agent.tarfmt import Reader

    reader = Reader(io.BytesIO(data))
    entries = [(n, b"".join(reader.read_data(s, n))) for n, s in reader.entries()]
    return entries[0][1], entries[2:]


def heavy_onnx(*, hidden: int = 1024, layers: int = 48) -> bytes:
    """The same function as ``tiny_onnx()`` (so the same sample passes) plus a costly branch multiplied by 0:
    a real, deliberately slower model for rollouts that must be stopped on latency."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = np.arange(256, dtype=np.float32).reshape(16, 16) / 256
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.ones(16, np.float32), "one"),
        numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32) / 4, "a"),
        numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32) / hidden**0.5, "b"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "b"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"h{layers}"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "one"], ["m1"]),
        helper.make_node("Add", ["m1", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
