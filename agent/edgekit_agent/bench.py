"""Benchmarking a candidate package on this device for the host (``bench/request`` → ``bench/response``).

The host chooses between candidates by what they do *here* (``edgekit fleet bench``, ``edgekit package
--measure-on``): INT8 against fp32 and one runtime against another rank differently on every ISA. A bench
fetches the package through the chunk protocol into ``DATA/candidates/ID`` (bounded in size), verifies it with
the same trust rules as an install (signature, revocation, expiry, profile), loads it on the runtime and device
its manifest names (falling back as an install would, and saying so), checks its output against the
package's sample, times it per batch size and deletes it. It never touches ``current``, the installed
versions or the updater's state; the serving model keeps answering (its latency during the bench is in the
answer, so interference shows). One bench at a time: another request is answered ``busy``.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edgekit_agent import power, runtime, runtimes
from edgekit_agent.errors import PackageError
from edgekit_agent.protocol import BenchRequest
from edgekit_agent.telemetry import Telemetry, rss_bytes
from edgekit_agent.transfer import Transfer, TransferError
from edgekit_agent.trust import TrustStore
from edgekit_agent.verify import verify_package

IDLE_S = 1.0  # the window before a bench whose power is the baseline of the marginal energy


def median_interval(samples: list[float]) -> tuple[float, float]:
    """The 95 % confidence interval of the median, distribution-free: the order statistics around it that
    hold it with 95 % probability (normal approximation of the binomial). The host ranks by these."""
    ordered = sorted(samples)
    n = len(ordered)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))
    return ordered[lo], ordered[hi]


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _latencies(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    lo, hi = median_interval(ordered)
    return {"runs": len(ordered), "p50_ms": round(_percentile(ordered, 0.5), 4), "p95_ms": round(_percentile(
        ordered, 0.95), 4), "p99_ms": round(_percentile(ordered, 0.99), 4), "p50_interval_ms": [round(lo, 4),
        round(hi, 4)]}  # fmt: skip


def _used_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Bench:
    """Runs bench requests one at a time in their own thread; ``reply`` sends the answer (via the outbox)."""

    def __init__(self, *, root: Path, trust: TrustStore, profile: str, transfer: Transfer, threads: int,
                 telemetry: Telemetry, trusted_now: Callable[[], datetime], limit_bytes: int,
                 reply: Callable[[dict[str, Any]], None], serving: Callable[[], Any],
                 power_model: tuple[float, float] | None = None, stop: Callable[[], bool] = lambda: False,
                 labels: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.root, self.trust, self.profile, self.transfer = root, trust, profile, transfer
        self.threads, self.telemetry, self.trusted_now, self.limit = threads, telemetry, trusted_now, limit_bytes
        self.reply, self.serving, self.stop = reply, serving, stop
        self.labels = labels or {}  # added to every answer (``emulated``)
        self.power = power.detect(power_model=power_model)  # its own reader: RAPL's is stateful per reader
        self._busy = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        for left in self.root.iterdir():  # a bench interrupted by a restart: never resumed, never kept
            shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink(missing_ok=True)

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def submit(self, request: BenchRequest) -> None:
        """From the MQTT thread: start the bench, or answer ``busy`` at once."""
        if not self._busy.acquire(blocking=False):
            self.reply({"id": request.id, "status": "busy", "reason": "another bench is running on this device; "
                        "retry when it has answered"})  # fmt: skip
            return
        threading.Thread(target=self._locked, args=(request,), name="edgekit-agent-bench", daemon=True).start()

    def _locked(self, request: BenchRequest) -> None:
        try:
            self.reply(self.run(request))
        finally:
            self._busy.release()

    def run(self, request: BenchRequest) -> dict[str, Any]:
        """The answer to one request; every failure is an answer with a one-line reason, never an exception."""
        package = request.package
        named = {"name": package.name, "version": package.version, "sha256": package.sha256}
        head = self.labels | {"id": request.id, "package": named}
        area = self.root / request.id
        try:
            free = self.limit - _used_bytes(self.root)
            if 2 * request.package.size > free:  # the download and its unpacked files
                return head | {"status": "refused", "reason": f"the candidates area is full: {request.package.size} "
                               f"bytes need twice that and {max(free, 0)} of its {self.limit} are free; raise "
                               "--bench-space-mb or bench a smaller package"}  # fmt: skip
            area.mkdir(parents=True, exist_ok=False)
            return head | self._bench(request, area)
        except FileExistsError:
            return head | {"status": "refused", "reason": f"bench id {request.id!r} is in use; give a new id"}
        except PackageError as exc:
            return head | {"status": "refused", "reason": f"package refused: {exc.one_line()}"}
        except TransferError as exc:
            return head | {"status": "error", "reason": f"download failed: {exc}"}
        except Exception as exc:  # a runtime that cannot load or run it: an answer, never a dead thread
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            return head | {"status": "error", "reason": f"{type(exc).__name__}: {first}"}
        finally:
            shutil.rmtree(area, ignore_errors=True)

    def _bench(self, request: BenchRequest, area: Path) -> dict[str, Any]:
        part = area / "package.part"
        self.transfer.fetch(request.package, part, stop=self.stop)
        verified = verify_package(part, trust=self.trust, profile=self.profile, min_counter=0, dest=area / "package",
                                  now=self.trusted_now())  # fmt: skip
        if verified.sha256 != request.package.sha256:
            return {"status": "refused", "reason": "the downloaded package is not the one the request names "
                    f"(sha256 {verified.sha256[:12]}…, expected {request.package.sha256[:12]}…)"}  # fmt: skip
        part.unlink()
        if runtimes.get(verified.manifest.engine).generative:
            return {"status": "refused", "reason": "a language-model package has no tensor batches to time; ask the "
                    "device with edgekit fleet generate (its answer has ttft_ms and tokens_per_s)"}  # fmt: skip
        rss0 = rss_bytes()
        events: list[dict[str, Any]] = []
        model = runtime.load(area / "package", verified.manifest, threads=self.threads,
                             event=lambda _k, data: events.append(data))  # fmt: skip
        fidelity = runtime.sample_fidelity(model)
        tap = self.telemetry.tap()
        try:
            timed = self._time(model, request)
        finally:
            serving_ms = self.telemetry.untap(tap)
        serving = self.serving()
        return {
            "status": "ok", "engine": model.engine, "device": model.device,
            "fallback": model.fallback_reason or (events[0].get("reason") if events else None),
            "manifest": {"engine": verified.manifest.engine, "device": verified.manifest.device,
                         "precision": verified.manifest.precision},
            "threads": self.threads, "sample": fidelity, "batches": timed["batches"],
            "rss_added_bytes": max(0, timed["rss_peak"] - rss0), "cpu_percent": timed["cpu_percent"],
            "power": timed["power"], "seconds": timed["seconds"],
            "serving": {"package": serving.manifest.summary() if serving is not None else None,
                        "requests": len(serving_ms), **(_latencies(serving_ms) if serving_ms else {})},
        }  # fmt: skip

    def _time(self, model: runtime.Loaded, request: BenchRequest) -> dict[str, Any]:
        """Each batch size: warm-up, then timed runs until ``runs`` or the request's time limit."""
        import numpy as np

        sample = runtime.sample_inputs(model)
        idle = self._power_over(IDLE_S)
        deadline = time.monotonic() + request.max_seconds
        self.power.read(0.0)  # a stateful reader (RAPL) starts its window here
        t0, cpu0, rss_peak = time.monotonic(), _cpu_seconds(), rss_bytes()
        batches, inferences = [], 0
        for size in request.batch_sizes:
            feed = {
                k: np.take(v, np.arange(size) % max(v.shape[0], 1), axis=0) if v.ndim else v for k, v in sample.items()
            }
            try:
                for _ in range(request.warmup):
                    model.predict(feed)
                samples = []
                while len(samples) < request.runs and time.monotonic() < deadline and not self.stop():
                    start = time.perf_counter()
                    model.predict(feed)
                    samples.append((time.perf_counter() - start) * 1e3)
                    if len(samples) % 50 == 0:
                        rss_peak = max(rss_peak, rss_bytes())
            except Exception as exc:  # a static batch axis refuses other sizes: that size's answer, not the bench's
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                batches.append({"batch": size, "error": first})
                continue
            inferences += len(samples) * size
            stats = _latencies(samples)
            batches.append({"batch": size, **stats, "items_per_s": round(size * 1e3 / (sum(samples) / len(samples)), 3),
                            "complete": len(samples) == request.runs})  # fmt: skip
        seconds = max(time.monotonic() - t0, 1e-9)
        utilisation = min((_cpu_seconds() - cpu0) / seconds / (os.cpu_count() or 1), 1.0)
        busy = self.power.read(utilisation)
        rss_peak = max(rss_peak, rss_bytes())
        return {"batches": batches, "rss_peak": rss_peak, "seconds": round(seconds, 3),
                "cpu_percent": round(100 * utilisation * (os.cpu_count() or 1), 2),
                "power": _energy(idle, busy, seconds, inferences)}  # fmt: skip

    def _power_over(self, seconds: float) -> power.Reading:
        """The device's power over a window before the bench (the serving model still runs in it)."""
        self.power.read(0.0)
        cpu0, t0 = _cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        elapsed = max(time.monotonic() - t0, 1e-9)
        return self.power.read(min((_cpu_seconds() - cpu0) / elapsed / (os.cpu_count() or 1), 1.0))


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _energy(idle: power.Reading, busy: power.Reading, seconds: float, inferences: int) -> dict[str, Any]:
    """Whole-device power during the bench and the *marginal* energy per inference: (bench power - power
    before it) x time / inferences. At a few inferences a second the whole-device figure is mostly idle power
    and says little about the model; the marginal one is what a candidate costs."""
    out: dict[str, Any] = {"source": busy.source, "is_estimate": None if busy.watts is None else not busy.measured,
                           "idle_w": idle.watts,
                           "bench_w": busy.watts, "energy_per_inference_mj": None,
                           "marginal_energy_per_inference_mj": None}  # fmt: skip
    if busy.watts is not None and inferences:
        out["energy_per_inference_mj"] = round(busy.watts * seconds / inferences * 1e3, 4)
        if idle.watts is not None:
            out["marginal_energy_per_inference_mj"] = round(
                max(busy.watts - idle.watts, 0.0) * seconds / inferences * 1e3, 4
            )
    return out
