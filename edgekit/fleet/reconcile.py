"""The reconciler in ``edgekit serve``: a device that runs something other than its desired package is told again.

A device converges only if the broker node it is connected to delivers the retained ``desired``. After a
broker node dies, a surviving node's retained view can lag (a NATS cluster replicates retained messages
through a JetStream stream), and a device that reconnected in that window keeps its old model with nobody
told. The store knows each device's latest deployment and, from its state, what it runs; so every
``period`` seconds one serve worker compares the two and publishes the desired state again to each
device that is online, not mid-update, and has diverged for longer than ``grace`` seconds.

- Exactly one worker reconciles at a time: it holds a lease row in the store (renewed each period,
  expiring after ``grace``), so a worker that dies hands over within the grace period.
- Resends back off per device (``grace`` × 2^n, ±20 % jitter); each is an event ``resent_desired``.
- A device still divergent after ``max_resends`` is flagged ``stuck`` with the reason from its last
  events (a refused signature, a counter it ignores): ``fleet status``, the report and rollouts show it.
- A device that reported a mid-update state (downloading … smoke_testing) less than ``stall`` seconds ago
  is left alone, as is one deployed to less than ``grace`` seconds ago.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit_agent.protocol import Desired

log = logging.getLogger("edgekit.reconcile")
LEASE = "reconciler"
MID_UPDATE = ("downloading", "verifying", "installing", "smoke_testing")


@dataclass
class ReconcileStats:
    ticks: int = 0
    resends: int = 0
    stuck: int = 0
    failures: int = 0
    leader: bool = False


@dataclass
class Reconciler:
    """Runs in its own thread with its own store connection; ``publish(fleet, device, desired)`` must send
    the retained desired state (QoS 1) and return once the broker has it."""

    store_url: str
    publish: Callable[[str, str, Desired], None]
    grace: float = 60.0
    period: float | None = None  # default: grace / 4, at most 10 s
    max_resends: int = 5
    stall: float | None = None  # default: 10 × grace
    holder: str = field(default_factory=lambda: f"serve-{uuid.uuid4().hex[:10]}")
    stats: ReconcileStats = field(default_factory=ReconcileStats)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgekit-reconcile")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def healthy(self) -> bool:
        # ident is None between Thread() and start(): not started yet is not dead (a heartbeat once read
        # that instant as UNHEALTHY)
        t = self._thread
        return t is None or t.ident is None or t.is_alive() or self._stop.is_set()

    def _run(self) -> None:
        from edgekit.fleet.store import Store

        period = self.period or min(self.grace / 4, 10.0)
        store = None
        while not self._stop.wait(0 if store is None else period):
            try:
                store = store or Store(self.store_url)
                self.tick(store)
            except Exception as exc:  # supervised: a bad row or a lost database must not end reconciling
                self.stats.failures += 1
                self.stats.leader = False
                log.warning("reconciling failed (%s: %s); trying again", type(exc).__name__, str(exc)[:200])
                if store is not None:
                    store.close()
                store = None
                if self._stop.wait(period):
                    break
        if store is not None:
            if self.stats.leader:
                store.release_lease(LEASE, self.holder)
            store.close()

    def tick(self, store: Any, now: float | None = None) -> list[tuple[str, str]]:
        """One pass; returns the devices the desired state was sent to again."""
        self.stats.ticks += 1
        self.stats.leader = store.take_lease(LEASE, self.holder, ttl=self.grace)
        if not self.stats.leader:
            return []
        now = time.time() if now is None else now
        devices = {(d["fleet"], d["device"]): d for f in _fleets(store) for d in store.devices(f)}
        records = store.reconcile_rows()
        resent = []
        for dep in store.desired_now():
            key = (dep["fleet"], dep["device"])
            device, record = devices.get(key), records.get(key)
            if record is not None and record["counter"] != dep["counter"]:
                record = None  # a new deployment: start over
            if device is None or _runs(device, dep):
                if records.get(key) is not None:
                    store.forget_reconcile(*key)
                continue
            if device["status"] != "online" or now - dep["t"] < self.grace or self._mid_update(store, dep, now):
                continue
            # divergent since it was deployed to: the grace since then has passed and it runs something else
            record = record or {"fleet": key[0], "device": key[1], "counter": dep["counter"], "resends": 0,
                                "divergent_since": dep["t"], "stuck": 0}  # fmt: skip
            if self._due(record, now) and self._resend(store, dep, record, now):
                resent.append(key)
            store.save_reconcile(record)
        return resent

    def _due(self, record: dict[str, Any], now: float) -> bool:
        if record["stuck"] or now - record["divergent_since"] < self.grace:
            return False
        return record.get("next_resend") is None or now >= record["next_resend"]

    def _resend(self, store: Any, dep: dict[str, Any], record: dict[str, Any], now: float) -> bool:
        fleet, device = dep["fleet"], dep["device"]
        if record["resends"] >= self.max_resends:
            record["stuck"] = 1
            record["reason"] = _last_reason(store, fleet, device)
            self.stats.stuck += 1
            store.record_host_event(fleet, device, "stuck", {"resends": record["resends"], "reason": record["reason"],
                                                             "version": dep["version"]})  # fmt: skip
            log.warning("%s/%s is stuck on another package after %d resends: %s", fleet, device,
                        record["resends"], record["reason"])  # fmt: skip
            return False
        desired = Desired(dep["name"], dep["version"], dep["sha256"], int(dep["counter"]), int(dep["size"]))
        self.publish(fleet, device, desired)
        record["resends"] += 1
        record["last_resend"] = now
        record["next_resend"] = now + self.grace * 2 ** record["resends"] * random.uniform(0.8, 1.2)
        self.stats.resends += 1
        store.record_host_event(fleet, device, "resent_desired", {"version": dep["version"], "counter": dep["counter"],
                                                                  "resends": record["resends"]})  # fmt: skip
        log.info("%s/%s still runs another package: desired %s sent again (%d)", fleet, device, dep["version"],
                 record["resends"])  # fmt: skip
        return True

    def _mid_update(self, store: Any, dep: dict[str, Any], now: float) -> bool:
        stall = self.stall if self.stall is not None else 10 * self.grace
        for event in reversed(store.events(dep["fleet"], dep["device"], since=now - stall, limit=20)):
            if event["kind"] == "update":
                return event["body"].get("state") in MID_UPDATE
        return False


def _fleets(store: Any) -> list[str]:
    return sorted(r["fleet"] for r in store.query("SELECT DISTINCT fleet FROM deployments"))


def _runs(device: dict[str, Any], dep: dict[str, Any]) -> bool:
    return (device["package_name"], device["package_version"], device["package_counter"]) == (
        dep["name"], dep["version"], dep["counter"])  # fmt: skip


def _last_reason(store: Any, fleet: str, device: str) -> str:
    """What the device last said about an update: the reason a rollback, ignore or error event gave."""
    for event in reversed(store.events(fleet, device, limit=20)):
        body = event["body"]
        if event["kind"] in ("rollback", "ignored", "error", "update") and body.get("reason"):
            return f"{event['kind']}: {str(body['reason'])[:200]}"
    return "no update events from the device (is its agent receiving desired?)"


def mqtt_publisher(broker: str) -> Callable[[str, str, Desired], None]:
    """``publish`` for a Reconciler: one desired state at a time through one kept connection."""
    from edgekit.fleet.mqtt import DesiredPublisher

    publisher = DesiredPublisher(broker, "reconcile", timeout=10.0)
    return lambda fleet, device, desired: publisher.publish(fleet, [device], desired)
