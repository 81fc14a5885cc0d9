"""Pull a package in hash-checked chunks with several requests in flight; resume after any restart.

Progress is a ``SHA.have`` file next to ``SHA.part``: one line ``index sha256`` (the server's hash of that
chunk) appended after each chunk is written. On resume every recorded chunk is re-hashed from the part file,
so a torn write (power loss, kill -9 between the data and the record) costs that chunk only. Lost chunks are
re-requested after ``timeout`` seconds, at most ``retries`` times each.

Chunks are not hashed as they arrive: the verifier reads and hashes every byte of the assembled file anyway,
and a file that hashes to the desired sha256 proves every chunk right. Hashing each chunk on arrival as well
hashed every byte twice and was the largest cost of a download on the device (docs/benchmarks.md). Only when
the whole-file hash is wrong does :meth:`Transfer.repair` re-hash the chunks against their recorded hashes
and forget the corrupt ones, which the next fetch requests again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgekit_agent.protocol import ChunkRequest, ChunkResponse, Desired


class TransferError(Exception):
    """The package could not be fetched (server error, retries exhausted, wrong bytes)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Stats:
    requested: int = 0
    received: int = 0
    resumed: int = 0
    corrupt: int = 0
    timeouts: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class Transfer:
    """``send`` publishes a ChunkRequest; responses arrive through :meth:`deliver` (any thread)."""

    send: Callable[[ChunkRequest], None]
    chunk_size: int = 256 * 1024
    window: int = 32
    timeout: float = 5.0
    retries: int = 5
    stats: Stats = field(default_factory=Stats)
    _inbox: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=256))
    _repaired: int = 0  # corrupt chunks found by the last repair, reported by the next fetch

    def deliver(self, response: ChunkResponse) -> None:
        """Called from the MQTT thread: never blocks; a full inbox drops the chunk, which is then re-requested."""
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(response)

    def _held(self, part: Path, have: Path, count: int, size: int) -> dict[int, str]:
        """index -> hash of every recorded chunk whose bytes in the part file still hash to its record."""
        held: dict[int, str] = {}
        if not (part.exists() and have.exists()):
            return held
        with open(part, "rb") as fh:
            for line in have.read_text().splitlines():
                try:
                    index_text, digest = line.split()
                    index = int(index_text)
                except ValueError:
                    continue  # a torn last line
                if not 0 <= index < count or index in held:
                    continue
                fh.seek(index * self.chunk_size)
                if hashlib.sha256(fh.read(min(self.chunk_size, size - index * self.chunk_size))).hexdigest() == digest:
                    held[index] = digest
        return held

    def repair(self, desired: Desired, part: Path) -> int:
        """After the assembled file failed its hash: keep only the chunks that match their recorded hash.

        Returns how many chunks were dropped (the next :meth:`fetch` requests them again and reports them as
        corrupt); 0 means every chunk is what the server said it sent, so fetching again cannot help.
        """
        count = -(-desired.size // self.chunk_size)
        have = part.with_suffix(".have")
        held = self._held(part, have, count, desired.size)
        try:
            tmp = have.with_suffix(".have.tmp")
            tmp.write_text("".join(f"{i} {d}\n" for i, d in sorted(held.items())))
            os.replace(tmp, have)
        except OSError as exc:
            raise _unwritable(exc) from None
        self._repaired = count - len(held)  # corrupt, or never recorded (a kill during an earlier repair)
        return self._repaired

    def fetch(self, desired: Desired, part: Path, *, stop: Callable[[], bool] = lambda: False) -> Stats:
        """Download ``desired`` into ``part``; returns the stats. Raises TransferError.

        The assembled file is not hashed here: verification reads every byte once anyway, and the updater
        compares that hash with ``desired.sha256``.
        """
        stats = self.stats = Stats()
        t0 = time.monotonic()
        size = desired.size
        count = -(-size // self.chunk_size)
        have_path = part.with_suffix(".have")
        held = self._held(part, have_path, count, size)
        stats.resumed = len(held)
        stats.corrupt, self._repaired = self._repaired, 0
        if not held:
            have_path.unlink(missing_ok=True)
        try:  # every write of the download: a full disk ends it as a retryable TransferError
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, size)
                with open(have_path, "a") as have:
                    self._pull(fd, have, desired, count, held, stop)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _unwritable(exc) from None
        stats.seconds = time.monotonic() - t0
        return stats

    def _pull(
        self, fd: int, have, desired: Desired, count: int, held: dict[int, str], stop: Callable[[], bool]
    ) -> None:
        stats = self.stats
        while not self._inbox.empty():  # responses to an earlier attempt are stale
            self._inbox.get_nowait()
        missing = deque(i for i in range(count) if i not in held)
        inflight: dict[str, tuple[int, float]] = {}
        attempts: dict[int, int] = {}
        session = uuid.uuid4().hex[:8]
        while missing or inflight:
            if stop():
                raise TransferError("the agent is stopping; the download resumes on restart")
            while missing and len(inflight) < self.window:
                index = missing.popleft()
                attempts[index] = attempts.get(index, 0) + 1
                if attempts[index] > self.retries + 1:
                    raise TransferError(f"chunk {index} failed {self.retries + 1} times; is edgekit serve running?")
                rid = f"{session}-{index}-{attempts[index]}"
                offset = index * self.chunk_size
                length = min(self.chunk_size, desired.size - offset)
                inflight[rid] = (index, time.monotonic() + self.timeout)
                self.send(ChunkRequest(rid, desired.sha256, offset, length))
                stats.requested += 1
            wait = max(0.0, min(deadline for _, deadline in inflight.values()) - time.monotonic())
            try:
                response = self._inbox.get(timeout=min(wait, 0.5))
            except queue.Empty:
                now = time.monotonic()
                for rid, (index, deadline) in list(inflight.items()):
                    if deadline <= now:
                        del inflight[rid]
                        missing.appendleft(index)
                        stats.timeouts += 1
                continue
            entry = inflight.pop(response.request_id, None)
            if entry is None:
                continue  # a duplicate or a response to a request that already timed out
            index = entry[0]
            if response.error:
                raise TransferError(f"the package server refused: {response.error}", retryable=False)
            offset = index * self.chunk_size
            expected = min(self.chunk_size, desired.size - offset)
            if response.offset != offset or len(response.data) != expected:
                stats.corrupt += 1
                missing.appendleft(index)
                continue
            os.pwrite(fd, response.data, offset)
            have.write(f"{index} {response.chunk_sha256}\n")
            have.flush()
            stats.received += 1
            stats.bytes += expected


def _unwritable(exc: OSError) -> TransferError:
    """A full disk, most likely: what is held stays, and the updater tries again later (retryable)."""
    return TransferError(
        f"cannot write the download ({exc.strerror or exc}); free space in the data dir: the download resumes "
        "from the chunks already held"
    )
