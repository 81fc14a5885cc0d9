"""Canary rollouts in waves, with automatic rollback, resumable from the store.

A rollout is one JSON document in the ``rollouts`` table, saved after every transition, so a killed
``edgekit rollout`` is picked up by ``edgekit rollout resume`` exactly where it stopped. Per wave:

``pending`` → (baseline taken, desired published) → ``installing`` → (every device reports the new version
online) → ``soaking`` → (``min_soak`` seconds of telemetry on the new version) → ``healthy``.

Health compares the wave's devices with *themselves on the previous version*: the median of their
per-interval p95 latencies over the last ``BASELINE_MESSAGES`` telemetry messages before the wave, against
the same over the soak. A p95 regression above ``max_p95_regression`` (and, when set, larger than
``min_p95_increase_ms`` in absolute terms), an error rate above
``max_error_rate``, a device that rolls the update back (smoke test, load failure) or does not install
within ``install_timeout`` is a breach: the rollout stops and every device it touched goes back to the
package it ran before. Devices refuse lower counters (anti-rollback), so going back means re-issuing the
old model's bytes under a new counter, signed with ``--key`` (:func:`edgekit.edgepkg.reissue`).
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.fleet.deploy import Release, deploy, release, targets
from edgekit.fleet.store import Store

BASELINE_MESSAGES = 20
ACTIVE = ("running", "rolling_back")


class RolloutInvalid(EdgekitError):
    pass


@dataclass(frozen=True)
class Policy:
    max_p95_regression: float = 0.20
    # a p95 rise smaller than this is never a breach: for sub-millisecond models one machine's scheduler moves
    # p95 by more than any percentage a canary would use (seen: 0.696 -> 1.127 ms, +62 %, from other processes)
    min_p95_increase_ms: float = 0.0
    max_error_rate: float = 0.01
    min_soak: float = 60.0
    install_timeout: float = 300.0
    poll: float = 0.5


def wave_sizes(specs: list[str], total: int) -> list[tuple[str, int]]:
    """(spec, cumulative device count) for ``1,10%,50%,100%`` over ``total`` devices.

    Waves that add no device (10% of 3 devices is the same 1 as the first wave) are dropped; the last wave
    always reaches every device of the group.
    """
    waves: list[tuple[str, int]] = []
    for spec in specs:
        raw = spec.strip()
        try:
            n = math.ceil(total * float(raw[:-1]) / 100) if raw.endswith("%") else int(raw)
        except ValueError:
            raise RolloutInvalid(f"--waves entry {spec!r} is not a count or a percentage like 10%") from None
        if n <= 0:
            raise RolloutInvalid(f"--waves entry {spec!r} selects no device")
        n = min(n, total)
        if waves and n < waves[-1][1]:
            raise RolloutInvalid(f"--waves {','.join(specs)} must not shrink (waves are cumulative)")
        if not waves or n > waves[-1][1]:
            waves.append((raw, n))
    if not waves or waves[-1][1] != total:
        waves.append(("100%", total))
    return waves


def plan(
    store: Store, fleet: str, package: Path, repository: Path, group: str, waves: list[str], policy: Policy
) -> dict[str, Any]:
    """A new rollout document, saved as ``running``; :func:`run` carries it out."""
    rel = release(package, repository)
    rows = targets(store, fleet, devices=[], group=group, profile=rel.profile)
    active = [r for r in store.rollouts(fleet) if r["status"] in ACTIVE]
    if active:
        raise RolloutInvalid(
            f"rollout {active[0]['id']} is still {active[0]['status']}; "
            "finish it with edgekit rollout resume or stop it with edgekit rollout abort"
        )
    devices = sorted(r["device"] for r in rows)
    previous = {}
    for device in devices:
        history = store.deployments(fleet, device)
        if history:
            last = history[-1]
            previous[device] = {k: last[k] for k in ("name", "version", "sha256", "counter", "size", "path")}
    doc = {
        "id": time.strftime("r%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4],
        "fleet": fleet,
        "group": group,
        "package": rel.to_json(),
        "policy": policy.__dict__,
        "status": "running",
        "previous": previous,
        "waves": [],
        "log": [],
        "created": time.time(),
    }
    start = 0
    for spec, size in wave_sizes(waves, len(devices)):
        doc["waves"].append({"spec": spec, "devices": devices[start:size], "status": "pending"})
        start = size
    store.save_rollout(doc)
    return doc


def find(store: Store, fleet: str, rollout_id: str | None) -> dict[str, Any]:
    docs = store.rollouts(fleet)
    if not docs:
        raise RolloutInvalid(f"no rollout in fleet {fleet!r} yet; start one with edgekit rollout PKG --group G")
    if rollout_id is None:
        return docs[-1]
    for doc in docs:
        if doc["id"] == rollout_id:
            return doc
    raise RolloutInvalid(f"no rollout {rollout_id!r} in fleet {fleet!r} (latest: {docs[-1]['id']})")


def _median_p95(rows: list[dict[str, Any]]) -> float | None:
    values = [r["p95_ms"] for r in rows if r["p95_ms"] is not None and (r["inferences"] or 0) > 0]
    return statistics.median(values) if values else None


def p95_breach(base: float | None, observed: float | None, policy: Policy) -> str | None:
    """Why the soak's p95 is a regression against the baseline's, or None (also when either is unknown)."""
    if not base or observed is None:
        return None
    change = observed / base - 1
    if change <= policy.max_p95_regression or observed - base <= policy.min_p95_increase_ms:
        return None
    floor = f", at least +{policy.min_p95_increase_ms:g} ms" if policy.min_p95_increase_ms else ""
    return (f"p95 {observed:.3f} ms vs {base:.3f} ms on the previous version "
            f"(+{change:.0%}, limit +{policy.max_p95_regression:.0%}{floor})")  # fmt: skip


def _error_rate(rows: list[dict[str, Any]]) -> float | None:
    inferences = sum(r["inferences"] or 0 for r in rows)
    errors = sum(r["errors"] or 0 for r in rows)
    return errors / (inferences + errors) if inferences + errors else None


class Runner:
    """Carries a rollout document forward; every transition is saved before the next side effect."""

    def __init__(
        self,
        store: Store,
        broker: str,
        doc: dict[str, Any],
        *,
        key: Path | None,
        repository: Path,
        on_log: Callable[[str], None] = lambda _m: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.broker, self.doc, self.key, self.repository = store, broker, doc, key, repository
        self.on_log, self.clock = on_log, clock
        self.policy = Policy(**doc["policy"])
        p = doc["package"]
        from edgekit_agent.protocol import Desired

        self.release = Release(
            Path(p["path"]), Desired(p["name"], p["version"], p["sha256"], p["counter"], p["size"]), p["profile"]
        )

    @property
    def fleet(self) -> str:
        return self.doc["fleet"]

    def log(self, message: str) -> None:
        self.doc["log"].append({"t": self.clock(), "message": message})
        self.store.save_rollout(self.doc)
        self.on_log(message)

    def save(self) -> None:
        self.store.save_rollout(self.doc)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if self.doc["status"] == "rolling_back":
            self._roll_back(self.doc.get("reason", "resumed rollback"))
            return self.doc
        if self.doc["status"] != "running":
            return self.doc
        for index, wave in enumerate(self.doc["waves"]):
            if wave["status"] == "healthy":
                continue
            breach = self._wave(index, wave)
            if breach:
                wave["status"] = "breached"
                wave["reason"] = breach
                self.doc["status"] = "rolling_back"
                self.doc["reason"] = f"wave {index + 1}: {breach}"
                self.log(f"wave {index + 1} breached: {breach}; rolling back")
                self._roll_back(self.doc["reason"])
                return self.doc
        self.doc["status"] = "completed"
        self.log(f"{self.release.desired.name} {self.release.desired.version} reached every device of the group")
        return self.doc

    def _wave(self, index: int, wave: dict[str, Any]) -> str | None:
        devices = wave["devices"]
        if wave["status"] == "pending":
            wave["baseline"] = self._baseline(devices)
            wave["started"] = self.clock()
            wave["status"] = "installing"
            self.save()
            deploy(self.store, self.broker, self.fleet, self.release, devices, rollout=self.doc["id"])
            self.log(f"wave {index + 1} ({wave['spec']}): {len(devices)} device(s) told to install "
                     f"{self.release.desired.version}")  # fmt: skip
        if wave["status"] == "installing":
            breach = self._await_install(wave)
            if breach:
                return breach
            wave["installed"] = self.clock()
            wave["status"] = "soaking"
            self.log(f"wave {index + 1}: installed on {len(devices)} device(s); soaking {self.policy.min_soak:g} s")
        if wave["status"] == "soaking":
            breach = self._soak(wave)
            if breach:
                return breach
            wave["status"] = "healthy"
            wave["finished"] = self.clock()
            self.log(f"wave {index + 1}: healthy ({_describe(wave['baseline'], wave['observed'])})")
        return None

    def _baseline(self, devices: list[str]) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for device in devices:
            current = self.store.device(self.fleet, device)["package_version"]
            rows += self.store.recent_telemetry(self.fleet, device, current, BASELINE_MESSAGES)
        return {"p95_ms": _median_p95(rows), "error_rate": _error_rate(rows), "messages": len(rows)}

    def _await_install(self, wave: dict[str, Any]) -> str | None:
        version, devices = self.release.desired.version, set(wave["devices"])
        deadline = wave["started"] + self.policy.install_timeout
        while True:
            rows = {r["device"]: r for r in self.store.devices(self.fleet) if r["device"] in devices}
            done = {d for d, r in rows.items() if r["status"] == "online" and r["package_version"] == version}
            for event in self.store.events(self.fleet, since=wave["started"] - 1, limit=1000):
                body = event["body"]
                if event["device"] not in devices:
                    continue
                if event["kind"] == "update" and body.get("state") == "rolled_back":
                    return f"{event['device']} refused or rolled back the update: {body.get('reason', '?')}"
                mine = body.get("sha256") in (None, self.release.desired.sha256)
                if event["kind"] == "ignored" and mine and event["received"] >= wave["started"]:
                    return f"{event['device']} ignored the package: {body.get('reason', '?')}"
                if event["kind"] == "stuck" and body.get("version") == version and event["received"] >= wave["started"]:
                    return f"{event['device']} is stuck after {body.get('resends')} resends ({body.get('reason', '?')})"
            if done == devices:
                return None
            if self.clock() > deadline:
                late = ", ".join(sorted(devices - done)[:5])
                return f"not installed within {self.policy.install_timeout:g} s on {late}"
            time.sleep(self.policy.poll)

    def _soak(self, wave: dict[str, Any]) -> str | None:
        version, devices = self.release.desired.version, wave["devices"]
        until = wave["installed"] + self.policy.min_soak
        while True:
            rows = [
                r
                for d in devices
                for r in self.store.telemetry(self.fleet, d, since=wave["installed"])
                if r["package_version"] == version
            ]
            reported = {r["device"] for r in rows}
            if self.clock() >= until and reported == set(devices):
                break
            if self.clock() > until + max(self.policy.min_soak, 30.0) + self.policy.install_timeout:
                silent = ", ".join(sorted(set(devices) - reported)[:5])
                return f"no telemetry on the new version from {silent}"
            time.sleep(self.policy.poll)
        observed = {"p95_ms": _median_p95(rows), "error_rate": _error_rate(rows), "messages": len(rows)}
        wave["observed"] = observed
        self.save()
        base = wave["baseline"]
        if observed["error_rate"] is not None and observed["error_rate"] > self.policy.max_error_rate:
            return f"error rate {observed['error_rate']:.2%} over the {self.policy.max_error_rate:.2%} limit"
        return p95_breach(base["p95_ms"], observed["p95_ms"], self.policy)

    # -- going back -------------------------------------------------------------------------------------
    def _roll_back(self, reason: str) -> None:
        from edgekit.edgepkg import Signing, reissue

        touched = [d for w in self.doc["waves"] if w["status"] != "pending" for d in w["devices"]]
        by_previous: dict[str, list[str]] = {}
        for device in touched:
            prev = self.doc["previous"].get(device)
            if prev is None:
                self.log(f"{device} ran nothing before this rollout: it keeps {self.release.desired.version}")
                continue
            by_previous.setdefault(prev["sha256"], []).append(device)
        if by_previous and self.key is None:
            raise RolloutInvalid(
                "rolling back needs the signing key (devices only accept a higher counter): "
                f"edgekit rollout resume --key KEY; rollout {self.doc['id']} stays rolling_back"
            )
        reissued = self.doc.setdefault("reissued", {})
        for sha, devices in by_previous.items():
            prev = self.doc["previous"][devices[0]]
            if sha not in reissued:
                source = self._find_package(prev)
                result = reissue(source, self.repository, Signing(key=self.key))
                reissued[sha] = str(result.path)
                self.save()
            rel = release(Path(reissued[sha]), self.repository)
            deploy(self.store, self.broker, self.fleet, rel, devices, rollout=self.doc["id"])
            self.log(f"{len(devices)} device(s) sent back to {prev['name']} {prev['version']} "
                     f"(re-issued as counter {rel.desired.counter})")  # fmt: skip
        deadline = self.clock() + self.policy.install_timeout
        pending = {d: self.doc["previous"][d]["version"] for ds in by_previous.values() for d in ds}
        while pending and self.clock() < deadline:
            rows = {r["device"]: r for r in self.store.devices(self.fleet)}
            pending = {d: v for d, v in pending.items() if rows.get(d, {}).get("package_version") != v}
            time.sleep(self.policy.poll)
        self.doc["status"] = "rolled_back"
        if pending:
            self.log(f"rolled back, but {', '.join(sorted(pending))} did not report the old version yet")
        else:
            self.log(f"rolled back: every touched device runs its previous version again ({reason})")

    def _find_package(self, prev: dict[str, Any]) -> Path:
        from edgekit.fleet.serve import sha256_file

        candidates = [Path(prev["path"])] if prev.get("path") else []
        candidates += sorted(self.repository.glob("*.edgepkg"))
        for path in candidates:
            if path.is_file() and sha256_file(path) == prev["sha256"]:
                return path
        raise RolloutInvalid(
            f"the previous package {prev['name']} {prev['version']} (sha256 {prev['sha256'][:12]}…) is not in "
            f"{self.repository}; put it back there and run edgekit rollout resume"
        )


def _describe(base: dict[str, Any], observed: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f} ms"

    def rate(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2%}"

    return (f"p95 {ms(observed['p95_ms'])} vs {ms(base['p95_ms'])} before, errors {rate(observed['error_rate'])}, "
            f"{observed['messages']} telemetry messages")  # fmt: skip


def abort(store: Store, doc: dict[str, Any], runner_factory: Callable[[dict[str, Any]], Runner]) -> dict[str, Any]:
    """Stop a rollout and send the devices it touched back (needs the key when any has a previous version)."""
    if doc["status"] not in ACTIVE:
        raise RolloutInvalid(f"rollout {doc['id']} is {doc['status']}; only a running rollout can be aborted")
    doc["status"] = "rolling_back"
    doc["reason"] = "aborted by the operator"
    store.save_rollout(doc)
    runner = runner_factory(doc)
    runner.log("aborted by the operator; rolling back")
    runner._roll_back(doc["reason"])
    doc["status"] = "aborted"
    store.save_rollout(doc)
    return doc
