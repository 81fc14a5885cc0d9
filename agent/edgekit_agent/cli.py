"""``edgekit-agent run`` and ``edgekit-agent bench``: argparse only, so the agent needs no CLI framework.

Settings come from flags or ``--config FILE`` (.yaml with PyYAML installed, .toml or .json); flags win.
Errors are one line on stderr and exit code 2; a refused package in ``bench`` exits 4.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edgekit_agent.agent import Agent, AgentConfig, ConfigError

FIELDS = {
    "broker": str, "fleet": str, "device_id": str, "profile": str, "data_dir": Path, "trust": list,
    "revoked": list, "threads": int, "chunk_size": int, "window": int, "chunk_timeout": float,
    "telemetry_interval": float, "ca": Path, "cert": Path, "key": Path, "username": str, "password": str,
    "power_model": str, "bench_space_mb": float, "emulated": bool,
}  # fmt: skip


def _load_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise ConfigError("a .yaml --config needs PyYAML (pip install pyyaml), or use .toml / .json") from None
    except Exception as exc:
        raise ConfigError(f"--config {path} is not valid: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of settings")
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s) {sorted(unknown)} (known: {sorted(FIELDS)})")
    return data


def _power_model(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        idle, peak = (float(x) for x in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"--power-model {text!r} must be IDLE_W:MAX_W, e.g. 2.7:6.4 (from the profile)") from None
    if not 0 < idle <= peak:
        raise ConfigError(f"--power-model {text!r}: need 0 < idle <= max")
    return idle, peak


def config_from(args: argparse.Namespace) -> AgentConfig:
    settings: dict[str, Any] = _load_config(args.config) if args.config else {}
    for name in FIELDS:
        value = getattr(args, name, None)
        if value not in (None, []):
            settings[name] = value
    missing = [n for n in ("broker", "fleet", "device_id", "profile", "data_dir", "trust") if not settings.get(n)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ConfigError(f"missing {flags} (give them as flags or in --config)")
    if isinstance(settings["broker"], list):  # a config file may list a cluster's nodes
        settings["broker"] = ",".join(str(b) for b in settings["broker"])
    settings["trust"] = [Path(p) for p in settings["trust"]]
    settings["data_dir"] = Path(settings["data_dir"])
    settings["power_model"] = _power_model(settings.get("power_model"))
    for name in ("ca", "cert", "key"):
        if settings.get(name):
            settings[name] = Path(settings[name])
    return AgentConfig(**settings)


SWITCH_INTERVAL_S = 0.001


def run(args: argparse.Namespace) -> int:
    from edgekit_agent.trust import TrustError

    try:
        agent = Agent(config_from(args))
    except TrustError as exc:
        raise ConfigError(str(exc)) from None
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    # The agent is I/O threads handing work to each other (paho loop -> transfer/inference workers). With the
    # default 5 ms GIL switch interval each hand-off can wait a whole interval: measured, a 25 MB pull went
    # from ~75 ms to ~60 ms with 1 ms (docs/benchmarks.md, agent section).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    agent.start()
    nodes = ", ".join(f"{e.host}:{e.port}" for e in agent.failover.endpoints)
    print(f"edgekit-agent {agent.cfg.device_id}: {nodes} fleet {agent.cfg.fleet}", file=sys.stderr)
    done.wait()
    agent.stop()
    return 0


def bench(args: argparse.Namespace) -> int:
    """Verify, install into a temporary directory and time the model exactly as the agent would serve it."""
    import tempfile

    import numpy as np

    from edgekit_agent import runtime
    from edgekit_agent.inference import encode, handle
    from edgekit_agent.protocol import dumps
    from edgekit_agent.trust import TrustStore
    from edgekit_agent.verify import verify_package

    with tempfile.TemporaryDirectory() as tmp:
        verified = verify_package(args.package, trust=TrustStore.load(args.trust), dest=Path(tmp) / "v")
        model = runtime.load(verified.directory, verified.manifest, threads=args.threads)
        runtime.smoke_test(model)
        if model.generative:
            raise SystemExit(
                "edgekit-agent bench times tensor packages; this one generates text: its smoke test "
                "passed, time it with edgekit fleet generate (ttft_ms, tokens_per_s)"
            )
        m = verified.manifest
        feed = {n: np.load(verified.directory / f, allow_pickle=False) for n, f in m.sample.inputs}
        request = dumps({"id": "bench", "inputs": {n: encode(a) for n, a in feed.items()}})
        bare, agent = [], []
        for _ in range(args.n):
            t0 = time.perf_counter()
            model.predict(feed)
            bare.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            handle(request, model, lambda _ms: None)
            agent.append((time.perf_counter() - t0) * 1e3)
    result = {
        "package": m.summary(),
        "runtime": f"{model.engine}:{model.device}",
        "fallback": model.fallback_reason,
        "runs": args.n,
        "model_p50_ms": statistics.median(bare),
        "request_p50_ms": statistics.median(agent),
        "request_overhead_pct": 100 * (statistics.median(agent) / statistics.median(bare) - 1),
    }
    print(json.dumps(result, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgekit-agent", description="The edgekit device agent.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="connect to the broker, converge on the desired package, serve, report")
    r.add_argument("--config", type=Path, help="settings file (.yaml, .toml, .json); flags override it")
    r.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT; several, comma-separated, to fail over")
    r.add_argument("--fleet")
    r.add_argument("--device-id", dest="device_id")
    r.add_argument("--profile", help="this device's profile name; packages for other profiles are refused")
    r.add_argument("--data-dir", dest="data_dir", type=Path)
    r.add_argument("--trust", action="append", default=[], help="trusted .pub or directory (repeatable)")
    r.add_argument("--revoked", action="append", default=[], help="revoked key id (repeatable)")
    r.add_argument("--threads", type=int)
    r.add_argument("--chunk-size", dest="chunk_size", type=int, help="bytes per chunk (default 262144)")
    r.add_argument("--window", type=int, help="chunk requests in flight (default 32)")
    r.add_argument("--chunk-timeout", dest="chunk_timeout", type=float, help="seconds before a chunk is re-requested")
    r.add_argument("--telemetry-interval", dest="telemetry_interval", type=float, help="seconds (default 10)")
    r.add_argument("--power-model", dest="power_model", help="IDLE_W:MAX_W for estimates where no sensor exists")
    r.add_argument("--bench-space-mb", dest="bench_space_mb", type=float,
                   help="disk space for candidates the host asks this device to bench (default 1024)")  # fmt: skip
    r.add_argument("--emulated", action="store_true", default=None,
                   help="runs under an emulator (qemu-user): its latencies are labelled, never a device's")  # fmt: skip
    r.add_argument("--ca", type=Path, help="CA certificate (enables TLS)")
    r.add_argument("--cert", type=Path, help="client certificate")
    r.add_argument("--key", type=Path, help="client key")
    r.add_argument("--username")
    r.add_argument("--password")
    b = sub.add_parser("bench", help="time a package's model as the agent serves it")
    b.add_argument("--package", type=Path, required=True)
    b.add_argument("--trust", action="append", type=Path, required=True)
    b.add_argument("-n", type=int, default=200)
    b.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    from edgekit_agent.errors import PackageError
    from edgekit_agent.runtime import RuntimeUnavailable, SmokeTestFailed
    from edgekit_agent.trust import TrustError

    args = parser().parse_args(argv)
    try:
        return run(args) if args.command == "run" else bench(args)
    except PackageError as exc:
        print(f"edgekit-agent: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except (ConfigError, TrustError, RuntimeUnavailable, SmokeTestFailed) as exc:
        print(f"edgekit-agent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
