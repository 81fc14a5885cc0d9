"""What the agent reports every interval: inference latency percentiles, throughput, errors, CPU, memory,
temperature, power with its source, and energy per inference (measured, or labelled an estimate)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from edgekit_agent.power import Reader
from edgekit_agent.schema import telemetry_message

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory: VmHWM (ru_maxrss would carry the peak of a parent that forked the
    agent); None where neither can be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None


def temperature_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The hottest thermal zone, or None where none is readable (as on these build machines)."""
    temps = []
    for zone in root.glob("thermal_zone*/temp"):
        try:
            temps.append(int(zone.read_text().strip()) / 1000)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def _percentile(sorted_ms: list[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


class Telemetry:
    """Collects inference timings from any thread; ``snapshot`` returns and resets one interval's numbers."""

    def __init__(self, power: Reader, *, max_samples: int = 100_000) -> None:
        self.power = power
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._count = 0
        self._errors = 0
        self._max = max_samples
        self._t0 = time.monotonic()
        self._cpu0 = self._cpu_seconds()
        self.dropped_messages = 0
        self._taps: list[list[float]] = []
        self._generations = 0
        self._tokens = 0
        self._ttft: list[float] = []
        self._decode: list[float] = []

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def record(self, latency_ms: float | None) -> None:
        with self._lock:
            if latency_ms is None:
                self._errors += 1
                return
            self._count += 1
            if len(self._latencies) < self._max:
                self._latencies.append(latency_ms)
            for tap in self._taps:
                if len(tap) < self._max:
                    tap.append(latency_ms)

    def record_generation(self, tokens: int, ttft_ms: float | None, decode_tokens_per_s: float | None) -> None:
        """One finished generation (``ttft_ms`` None: it failed; counted as an error)."""
        with self._lock:
            if ttft_ms is None and not tokens:
                self._errors += 1
                return
            self._generations += 1
            self._tokens += tokens
            if ttft_ms is not None and len(self._ttft) < self._max:
                self._ttft.append(ttft_ms)
            if decode_tokens_per_s is not None and len(self._decode) < self._max:
                self._decode.append(decode_tokens_per_s)

    def tap(self) -> list[float]:
        """A list that also gets every latency recorded until :meth:`untap` (a bench watches the serving model
        with it), apart from the interval snapshots."""
        tap: list[float] = []
        with self._lock:
            self._taps.append(tap)
        return tap

    def untap(self, tap: list[float]) -> list[float]:
        with self._lock:
            self._taps = [t for t in self._taps if t is not tap]
            return list(tap)

    def snapshot(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), self._cpu_seconds()
        with self._lock:
            latencies, count, errors = sorted(self._latencies), self._count, self._errors
            self._latencies, self._count, self._errors = [], 0, 0
            generations, tokens, ttft, decode = (
                self._generations,
                self._tokens,
                sorted(self._ttft),
                sorted(self._decode),
            )
            self._generations, self._tokens, self._ttft, self._decode = 0, 0, [], []
            elapsed, cpu_used = max(now - self._t0, 1e-9), cpu - self._cpu0
            self._t0, self._cpu0 = now, cpu
        cores = os.cpu_count() or 1
        utilisation = min(cpu_used / elapsed / cores, 1.0)
        reading = self.power.read(utilisation)
        energy_mj = token_mj = None
        if reading.watts is not None and count:
            energy_mj = reading.watts * elapsed / count * 1e3
        if reading.watts is not None and tokens:
            token_mj = reading.watts * elapsed / tokens * 1e3
        # one name per field (schema.TELEMETRY); the wire nests latency and power as agents always have
        return telemetry_message({
            "interval_s": round(elapsed, 3),
            "inferences": count,
            "errors": errors,
            "throughput_per_s": round(count / elapsed, 3),
            "p50_ms": _percentile(latencies, 0.50) if latencies else None,
            "p95_ms": _percentile(latencies, 0.95) if latencies else None,
            "p99_ms": _percentile(latencies, 0.99) if latencies else None,
            "cpu_percent": round(100 * cpu_used / elapsed, 2),
            "rss_bytes": rss_bytes(),
            "temperature_c": temperature_c(),
            "power_w": None if reading.watts is None else round(reading.watts, 4),
            "power_source": reading.source,
            # the device's whole power over the interval divided by the inferences in it
            "energy_per_inference_mj": None if energy_mj is None else round(energy_mj, 4),
            "energy_is_estimate": not reading.measured,
            "dropped_messages": self.dropped_messages,
            "generations": generations or None,
            "tokens_generated": tokens or None,
            "ttft_p50_ms": round(_percentile(ttft, 0.50), 3) if ttft else None,
            "ttft_p95_ms": round(_percentile(ttft, 0.95), 3) if ttft else None,
            "decode_tokens_per_s": round(_percentile(decode, 0.50), 3) if decode else None,
            # the device's whole power over the interval divided by the tokens generated in it
            "energy_per_token_mj": None if token_mj is None else round(token_mj, 4),
            "peak_rss_bytes": peak_rss_bytes(),
        })  # fmt: skip
