"""The signed description of a package: a strict, versioned schema (docs/package-format.md).

Parsing is strict on purpose: unknown fields, duplicate JSON keys, NaN and wrong types are refused, so a
verifier written in another language cannot read a different meaning out of the same signed bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgekit_agent.errors import PackageError
from edgekit_agent.runtimes import ALL
from edgekit_agent.tarfmt import check_name

FORMAT = "edgepkg/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
RESERVED = (MANIFEST, SIGNATURE)
ENGINES = tuple(ALL)
MODEL_FORMATS = {r.model_format: r.name for r in ALL.values()}
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"ed25519:[0-9a-f]{16}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
MAX_COUNTER = 2**63 - 1


def _bad(message: str) -> PackageError:
    return PackageError("bad-manifest", message)


def _object(value: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object")
    unknown = set(value) - required - optional
    if unknown:
        raise _bad(f"{where} has unknown field(s) {sorted(unknown)}; this agent reads {FORMAT} (upgrade it?)")
    missing = required - set(value)
    if missing:
        raise _bad(f"{where} lacks field(s) {sorted(missing)}")
    return value


def _str(value: Any, where: str, pattern: re.Pattern[str] | None = None, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _bad(f"{where} must be a non-empty string of at most {max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise _bad(f"{where} {value!r} does not match {pattern.pattern}")
    return value


def _int(value: Any, where: str, low: int = 0, high: int = MAX_COUNTER) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{where} must be an integer in [{low}, {high}]")
    return value


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(f"{where} must be a non-negative number")
    return float(value)


def _list(value: Any, where: str, max_items: int = 256) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_items:
        raise _bad(f"{where} must be a list of at most {max_items} items")
    return value


def _path(value: Any, where: str) -> str:
    try:
        return check_name(_str(value, where, max_len=100))
    except PackageError as exc:
        raise _bad(f"{where}: {exc}") from None


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _time(value: Any, where: str) -> datetime:
    text = _str(value, where, _TIME)
    try:
        return parse_time(text)
    except ValueError:
        raise _bad(f"{where} {text!r} is not a valid UTC time") from None


def parse_time(text: str) -> datetime:
    """The inverse of :func:`format_time`; ValueError for anything else."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Sample:
    inputs: tuple[tuple[str, str], ...]  # (tensor name, file)
    outputs: tuple[tuple[str, str], ...]
    rtol: float
    atol: float


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    counter: int
    profile: str
    engine: str
    device: str
    precision: str
    model_format: str
    entry: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sample: Sample
    files: tuple[FileEntry, ...]
    issued_at: datetime
    expires_at: datetime
    key_id: str
    runtime_config: dict[str, str] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def file(self, path: str) -> FileEntry:
        return next(f for f in self.files if f.path == path)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "counter": self.counter,
            "profile": self.profile,
            "runtime": f"{self.engine}:{self.device}",
            "precision": self.precision,
            "key_id": self.key_id,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
        }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise _bad(f"manifest repeats the key {dup!r}; a manifest must be unambiguous")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise _bad(f"manifest contains {name}, which is not JSON")


def load_json(data: bytes) -> dict[str, Any]:
    """Parse manifest bytes as strict JSON (UTF-8, no duplicate keys, no NaN/Infinity)."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except PackageError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(f"manifest.json is not valid UTF-8 JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise _bad("manifest.json must hold a JSON object")
    return value


def key_id_of(raw: dict[str, Any]) -> str:
    """The signer's key id, read before the signature is checked so the right trusted key can be picked."""
    return _str(raw.get("key_id"), "key_id", _KEY_ID)


def _tensor(value: Any, where: str) -> TensorSpec:
    obj = _object(value, where, {"name", "dtype", "shape"})
    dtype = _str(obj["dtype"], f"{where}.dtype")
    if dtype not in DTYPES:
        raise _bad(f"{where}.dtype {dtype!r} is not one of {list(DTYPES)}")
    shape = []
    for i, dim in enumerate(_list(obj["shape"], f"{where}.shape", 16)):
        shape.append(None if dim is None else _int(dim, f"{where}.shape[{i}]", 0, 2**31))
    return TensorSpec(_str(obj["name"], f"{where}.name"), dtype, tuple(shape))


def _sample_refs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    refs = []
    for i, item in enumerate(_list(value, where, 64)):
        obj = _object(item, f"{where}[{i}]", {"name", "file"})
        refs.append((_str(obj["name"], f"{where}[{i}].name"), _path(obj["file"], f"{where}[{i}].file")))
    return tuple(refs)


def parse(raw: dict[str, Any]) -> Manifest:
    """Validate an authenticated manifest object; every field is checked, unknown ones refused."""
    fmt = raw.get("format")
    if fmt != FORMAT:
        raise PackageError(
            "unsupported-format", f"package format {fmt!r} is not {FORMAT!r}; upgrade edgekit-agent to read it"
        )
    top = _object(
        raw,
        "manifest",
        {"format", "name", "version", "counter", "profile", "runtime", "model", "inputs", "outputs", "sample",
         "files", "issued_at", "expires_at", "key_id"},
        {"preprocessing", "postprocessing", "report"},
    )  # fmt: skip
    runtime = _object(top["runtime"], "runtime", {"engine", "device", "precision"}, {"config"})
    engine = _str(runtime["engine"], "runtime.engine")
    if engine not in ENGINES:
        raise _bad(f"runtime.engine {engine!r} is not one of {list(ENGINES)}")
    config = _object(runtime.get("config", {}), "runtime.config", set(), set(runtime.get("config", {})))
    if not all(isinstance(v, str) for v in config.values()):
        raise _bad("runtime.config values must be strings")
    model = _object(top["model"], "model", {"format", "entry"})
    model_format = _str(model["format"], "model.format")
    if MODEL_FORMATS.get(model_format) != engine:
        raise _bad(f"model.format {model_format!r} cannot run on runtime.engine {engine!r}")
    files = []
    for i, item in enumerate(_list(top["files"], "files")):
        obj = _object(item, f"files[{i}]", {"path", "size", "sha256"})
        path = _path(obj["path"], f"files[{i}].path")
        if path in RESERVED:
            raise _bad(f"files[{i}].path {path!r} is reserved")
        files.append(FileEntry(path, _int(obj["size"], f"files[{i}].size"), _str(obj["sha256"], "sha256", _SHA256)))
    paths = [f.path for f in files]
    if paths != sorted(set(paths)):
        raise _bad("files must be listed once each, sorted by path")
    sample = _object(top["sample"], "sample", {"inputs", "outputs", "rtol", "atol"})
    manifest = Manifest(
        name=_str(top["name"], "name", _LABEL),
        version=_str(top["version"], "version", _LABEL),
        counter=_int(top["counter"], "counter", 1),
        profile=_str(top["profile"], "profile", _LABEL),
        engine=engine,
        device=_str(runtime["device"], "runtime.device", _LABEL),
        precision=_str(runtime["precision"], "runtime.precision", _LABEL),
        runtime_config=dict(config),
        model_format=model_format,
        entry=_path(model["entry"], "model.entry"),
        inputs=tuple(_tensor(t, f"inputs[{i}]") for i, t in enumerate(_list(top["inputs"], "inputs", 64))),
        outputs=tuple(_tensor(t, f"outputs[{i}]") for i, t in enumerate(_list(top["outputs"], "outputs", 64))),
        sample=Sample(
            _sample_refs(sample["inputs"], "sample.inputs"),
            _sample_refs(sample["outputs"], "sample.outputs"),
            _num(sample["rtol"], "sample.rtol"),
            _num(sample["atol"], "sample.atol"),
        ),
        files=tuple(files),
        issued_at=_time(top["issued_at"], "issued_at"),
        expires_at=_time(top["expires_at"], "expires_at"),
        key_id=key_id_of(top),
        preprocessing=_object(top.get("preprocessing", {}), "preprocessing", set(), set(top.get("preprocessing", {}))),
        postprocessing=_object(
            top.get("postprocessing", {}), "postprocessing", set(), set(top.get("postprocessing", {}))
        ),
        report=_object(top.get("report", {}), "report", set(), set(top.get("report", {}))),
    )
    referenced = [manifest.entry, *(f for _, f in manifest.sample.inputs + manifest.sample.outputs)]
    for ref in referenced:
        if ref not in paths:
            raise _bad(f"{ref!r} is referenced by the manifest but not listed in files")
    if manifest.expires_at <= manifest.issued_at:
        raise _bad("expires_at must be later than issued_at")
    return manifest


def dumps(raw: dict[str, Any]) -> bytes:
    """The canonical manifest bytes edgekit signs: sorted keys, 2-space indent, ASCII, trailing newline."""
    return (json.dumps(raw, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()
