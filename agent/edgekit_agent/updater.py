"""The updater: one explicit state machine, its state on disk before every side effect.

| state          | side effect that follows                         | next                        |
|----------------|--------------------------------------------------|-----------------------------|
| idle           | -                                                | downloading                 |
| downloading    | chunks into downloads/SHA.part                   | verifying, rolled_back      |
| verifying      | verify_package → versions/NAME-COUNTER-SHA12     | installing, rolled_back     |
| installing     | load the new model next to the serving one       | smoke_testing, rolled_back  |
| smoke_testing  | run the sample, compare with the expected output | committed, rolled_back      |
| committed      | switch ``current``, start serving the new model  | downloading                 |
| rolled_back    | drop the candidate; the old model keeps serving  | downloading                 |

On start, ``recover`` looks at the persisted state: a download or verification resumes (the chunks already
held are kept); an interrupted install or smoke test is rolled back (the switch never happened, so the old
model is still current); a commit is completed (switching again is idempotent).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekit_agent import runtime
from edgekit_agent.errors import PackageError
from edgekit_agent.manifest import format_time, parse_time
from edgekit_agent.protocol import Desired
from edgekit_agent.store import Store
from edgekit_agent.transfer import Transfer, TransferError
from edgekit_agent.trust import TrustStore
from edgekit_agent.verify import verify_package

TRANSITIONS: dict[str, set[str]] = {
    "idle": {"downloading"},
    "downloading": {"verifying", "rolled_back"},
    "verifying": {"installing", "rolled_back", "downloading"},  # downloading: corrupt chunks are fetched again
    "installing": {"smoke_testing", "rolled_back"},
    "smoke_testing": {"committed", "rolled_back"},
    "committed": {"downloading"},
    "rolled_back": {"downloading"},
}
Event = Callable[[str, dict[str, Any]], None]
REPAIRS = 3  # times a download whose chunks were corrupted on the way is repaired before it is discarded


class Updater:
    def __init__(
        self,
        store: Store,
        *,
        trust: TrustStore,
        profile: str,
        transfer: Transfer,
        threads: int = 1,
        event: Event = lambda _k, _d: None,
        on_serving: Callable[[runtime.Loaded | None], None] = lambda _m: None,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store, self.trust, self.profile, self.transfer = store, trust, profile, transfer
        self.threads, self.event, self.on_serving, self.stop = threads, event, on_serving, stop
        self.state = store.read_state()
        self.serving: runtime.Loaded | None = None
        self._lock = threading.Lock()

    # -- state -------------------------------------------------------------------------------------------
    def _enter(self, new: str, **fields: Any) -> None:
        """Persist the next state *before* the side effect it announces."""
        old = self.state["state"]
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"updater: illegal transition {old} -> {new}")
        self.state = {**self.state, **fields, "state": new}
        try:
            self.store.write_state(self.state)
        except OSError as exc:
            if new != "rolled_back":
                raise  # no side effect may follow a state that is not on disk; the caller rolls back
            # A full disk refused the state file while giving up an update: what is on disk still says
            # "downloading", and after a restart the download resumes, which is what rolled_back allows too.
            self.event("error", {"reason": f"cannot save the updater state ({exc.strerror or exc}); free space "
                                 "in the data dir"})  # fmt: skip
        self.event("update", {"state": new, **{k: v for k, v in fields.items() if k in ("reason", "version")}})

    def trusted_now(self) -> datetime:
        """The time expiry checks use: never before a moment this device has already seen.

        A device without a battery-backed clock can boot in 1970, and anyone who can set its clock could
        turn it back to make an expired package valid again. The floor is the latest of the system clock
        at every verification and the ``issued_at`` of the installed package (it was signed after that
        moment), persisted in the state file, so it survives restarts and never goes backwards.
        """
        floor, now = _parse(self.state.get("time_floor")), self.trusted_time()
        if floor is None or now > floor:
            self.state = {**self.state, "time_floor": format_time(now)}
            self.store.write_state(self.state)
        return now

    def trusted_time(self) -> datetime:
        """As :meth:`trusted_now`, without moving the persisted floor: a bench must not write the updater's state."""
        floor = _parse(self.state.get("time_floor"))
        installed = _parse((self.state.get("installed") or {}).get("issued_at"))
        return max(t for t in (datetime.now(UTC), floor, installed) if t is not None)

    def recover(self) -> None:
        """Bring disk and memory in line after a start (clean or after kill -9), then load what is current."""
        state, target = self.state["state"], self.state.get("target")
        candidate = Path(self.state["candidate"]) if self.state.get("candidate") else None
        if state == "committed" and candidate is not None and candidate.is_dir():
            if self.store.current() != candidate.resolve():
                self.store.switch(candidate)
                self.event("update", {"state": "committed", "reason": "switch completed after a restart"})
            if self.state.get("installed_sha256"):  # killed after the switch, before the download was dropped
                self.store.drop_download(self.state["installed_sha256"])
        elif state in ("installing", "smoke_testing"):
            if candidate is not None:
                self.store.remove_version(candidate)
            self._enter("rolled_back", reason=f"interrupted by a restart while {state}", retryable=True)
        self.store.clean(keep={p for p in (self.store.current(), self._previous()) if p is not None})
        self._load_current()
        if state in ("downloading", "verifying") and target:
            self.event("update", {"state": state, "reason": "resuming after a restart"})
            self.apply(Desired(**target), resuming=True)

    def _previous(self) -> Path | None:
        prev = self.state.get("previous")
        return Path(prev) if prev and Path(prev).is_dir() else None

    def _load_current(self) -> None:
        current = self.store.current()
        if current is None:
            self.on_serving(None)
            return
        try:
            result = installed_manifest(current)
            self.serving = runtime.load(current, result, threads=self.threads, event=self.event)
            runtime.smoke_test(self.serving)
        except Exception as exc:  # the installed model cannot run here: say so, serve nothing, keep running
            self.serving = None
            self.event("error", {"reason": f"cannot load the installed model {current.name}: {exc}"})
        self.on_serving(self.serving)

    # -- converge ----------------------------------------------------------------------------------------
    def converged(self, desired: Desired) -> bool:
        return self.state.get("installed_sha256") == desired.sha256

    def apply(self, desired: Desired, *, resuming: bool = False) -> None:
        """Converge on ``desired``; harmless to call again with the same or an older message."""
        with self._lock:
            if self.converged(desired):
                return
            if desired.counter <= self.state.get("installed_counter", 0):
                installed = self.state.get("installed_counter")
                reason = f"desired counter {desired.counter} is not above the installed {installed} (stale or replay)"
                self.event("ignored", {"reason": reason, "version": desired.version, "sha256": desired.sha256})
                return
            failed = self.state.get("failed") or {}
            if not resuming and failed.get("sha256") == desired.sha256 and not failed.get("retryable"):
                return  # already refused for a reason that retrying cannot fix
            if self.state["state"] not in ("downloading", "verifying") or not resuming:
                if self.state["state"] in ("downloading", "verifying", "installing", "smoke_testing"):
                    self._enter("rolled_back", reason="superseded by a newer desired package", retryable=True)
                self._enter("downloading", target=asdict(desired), candidate=None, version=desired.version)
            self._run(desired)

    def _run(self, desired: Desired) -> None:
        candidate: Path | None = None
        part = self.store.part(desired.sha256)
        try:
            for repairs in range(REPAIRS + 1):
                if self.state["state"] == "downloading":
                    stats = self.transfer.fetch(desired, part, stop=self.stop)
                    self.event("download", {"chunks": stats.received, "resumed_chunks": stats.resumed,
                                            "corrupt": stats.corrupt, "timeouts": stats.timeouts,
                                            "seconds": round(stats.seconds, 3)})  # fmt: skip
                    self._enter("verifying")
                candidate = self.store.version_dir(desired.name, desired.counter, desired.sha256)
                self.store.remove_version(candidate)  # leftovers of an interrupted attempt
                verified = self._verify(desired, part, candidate)
                if verified is not None:
                    break
                # The bytes are not the package the host named: a chunk was corrupted on its way (chunks are
                # checked here, by the one whole-file hash, not one by one as they arrive; see transfer.py).
                self.store.remove_version(candidate)
                if repairs == REPAIRS or not self.transfer.repair(desired, part):
                    self.store.drop_download(desired.sha256)
                    raise TransferError(f"the downloaded package does not hash to {desired.sha256[:12]}…; discarded")
                self._enter("downloading")
            self._enter("installing", candidate=str(candidate))
            loaded = runtime.load(candidate, verified.manifest, threads=self.threads, event=self.event)
            self._enter("smoke_testing")
            runtime.smoke_test(loaded)
            previous = self.store.current()
            self._enter(
                "committed",
                installed=verified.manifest.summary(),
                installed_sha256=desired.sha256,
                installed_counter=verified.manifest.counter,
                previous=str(previous) if previous else None,
                failed=None,
            )
            self.store.switch(candidate)
            self.serving = loaded
            self.on_serving(loaded)
            self.store.drop_download(desired.sha256)
            self.store.clean(keep={p for p in (candidate, previous) if p is not None})
        except TransferError as exc:
            self._fail(desired, candidate, f"download failed: {exc}", retryable=exc.retryable, keep_part=True)
        except PackageError as exc:
            # io-error: the package could not be unpacked (a full disk): not the package's fault, try again
            io = exc.reason == "io-error"
            self._fail(desired, candidate, f"package refused: {exc.one_line()}", retryable=io, keep_part=io)
        except runtime.SmokeTestFailed as exc:
            self._fail(desired, candidate, f"smoke test failed: {exc}", retryable=False)
        except Exception as exc:  # runtime load failures and anything unforeseen: never leave a half install
            self._fail(desired, candidate, f"install failed: {type(exc).__name__}: {exc}", retryable=False)

    def _verify(self, desired: Desired, part: Path, candidate: Path) -> Any:
        """The verified package, or None when the file is not the one the host named (a transfer fault).

        A corrupted chunk can break the package's structure or signature before the whole-file hash is known,
        so a refusal is blamed on the package only when the file really is the desired one.
        """
        try:
            verified = verify_package(
                part,
                trust=self.trust,
                profile=self.profile,
                min_counter=self.state.get("installed_counter", 0) + 1,
                dest=candidate,
                now=self.trusted_now(),
            )
        except PackageError as exc:
            if exc.reason == "io-error" or _sha256_file(part) == desired.sha256:
                raise
            return None
        return verified if verified.sha256 == desired.sha256 else None

    def _fail(
        self, desired: Desired, candidate: Path | None, reason: str, *, retryable: bool, keep_part: bool = False
    ) -> None:
        self._enter("rolled_back", reason=reason, failed={"sha256": desired.sha256, "reason": reason,
                                                          "retryable": retryable})  # fmt: skip
        if candidate is not None:
            self.store.remove_version(candidate)
        if not keep_part:
            self.store.drop_download(desired.sha256)
        self.event("rollback", {"version": desired.version, "reason": reason,
                                "serving": self.serving.manifest.summary() if self.serving else None})  # fmt: skip


def _sha256_file(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _parse(text: Any) -> datetime | None:
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None  # an unreadable floor is no floor; the system clock still applies


def installed_manifest(directory: Path) -> Any:
    """The manifest of an installed version: verified when it was installed, re-parsed (not re-verified) here."""
    from edgekit_agent.manifest import load_json, parse

    return parse(load_json((directory / "manifest.json").read_bytes()))
