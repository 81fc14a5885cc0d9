"""Recovery from whatever state a crash left on disk, without a broker (the transfer is never used)."""

from __future__ import annotations

import json

import pkgs
import pytest
from edgekit_agent.store import Store
from edgekit_agent.transfer import Transfer
from edgekit_agent.trust import TrustStore
from edgekit_agent.updater import TRANSITIONS, Updater
from edgekit_agent.verify import verify_package

pytestmark = pytest.mark.integration


def installed_store(tmp_path):
    """A data dir with v1 committed and current, and a verified v2 unpacked next to it."""
    key, pub = pkgs.keys(tmp_path / "keys")
    trust = TrustStore.load([pub])
    store = Store(tmp_path / "data")
    dirs = {}
    for name, counter, scale in (("v1", 7, 1.0), ("v2", 8, 2.0)):
        pkg = pkgs.build(pkgs.source_dir(tmp_path / name, scale=scale), tmp_path / f"{name}.edgepkg", key,
                         counter=counter, version=name)  # fmt: skip
        dirs[name] = store.version_dir("tiny", counter, name * 32)
        verify_package(pkg, trust=trust, now=pkgs.NOW, dest=dirs[name])
    store.switch(dirs["v1"])
    base = {"installed": {"version": "v1"}, "installed_counter": 7, "installed_sha256": "a" * 64}
    return store, trust, dirs, base


def updater(store, trust, events):
    return Updater(store, trust=trust, profile=pkgs.PROFILE, transfer=Transfer(lambda _r: None),
                   event=lambda kind, data: events.append((kind, data)))  # fmt: skip


@pytest.mark.parametrize("interrupted", ["installing", "smoke_testing"])
def test_an_interrupted_install_rolls_back_and_keeps_the_old_model(tmp_path, interrupted):
    store, trust, dirs, base = installed_store(tmp_path)
    store.write_state({**base, "state": interrupted, "candidate": str(dirs["v2"])})
    events: list = []
    up = updater(store, trust, events)
    up.recover()
    assert up.state["state"] == "rolled_back" and "interrupted" in up.state["reason"]
    assert store.current() == dirs["v1"].resolve() and not dirs["v2"].exists()
    assert up.serving is not None and up.serving.manifest.version == "v1"
    assert json.loads(store.state_path.read_text())["state"] == "rolled_back"


def test_a_commit_interrupted_before_the_switch_is_completed(tmp_path):
    store, trust, dirs, base = installed_store(tmp_path)
    store.write_state({**base, "state": "committed", "candidate": str(dirs["v2"]), "installed_counter": 8})
    events: list = []
    up = updater(store, trust, events)
    up.recover()
    assert store.current() == dirs["v2"].resolve()
    assert up.serving.manifest.version == "v2"
    assert any("switch completed" in json.dumps(d) for _, d in events)


def test_half_unpacked_leftovers_are_removed_on_start(tmp_path):
    store, trust, dirs, base = installed_store(tmp_path)
    store.write_state({**base, "state": "committed", "candidate": str(dirs["v1"])})
    leftover = store.versions / ".tiny-9-x.partial-abc"
    leftover.mkdir()
    updater(store, trust, []).recover()
    assert not leftover.exists() and dirs["v1"].exists()


def test_every_state_is_reachable_and_only_declared_transitions_are_allowed(tmp_path):
    reachable, frontier = {"idle"}, ["idle"]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(TRANSITIONS)
    store, trust, _, base = installed_store(tmp_path)
    store.write_state({**base, "state": "idle"})
    up = updater(store, trust, [])
    with pytest.raises(RuntimeError, match="illegal transition idle -> committed"):
        up._enter("committed")


def local_transfer(path, corrupt=None):
    """A real Transfer whose requests are answered straight from the package file (no broker needed).

    ``corrupt(offset, n)`` -> None (send the good bytes), "link" (flipped bytes, the good chunk hash: a bad
    link) or "server" (flipped bytes and their own hash: a server sending the wrong file); n counts the asks.
    """
    import hashlib

    from edgekit_agent.protocol import ChunkResponse

    asked = {}

    def send(request):
        with open(path, "rb") as fh:
            fh.seek(request.offset)
            data = fh.read(request.length)
        digest = hashlib.sha256(data).hexdigest()
        asked[request.offset] = n = asked.get(request.offset, 0) + 1
        how = corrupt(request.offset, n) if corrupt else None
        if how:
            data = bytes(b ^ 0xFF for b in data)
            digest = hashlib.sha256(data).hexdigest() if how == "server" else digest
        transfer.deliver(ChunkResponse(request.request_id, request.sha256, request.offset, data, digest))

    transfer = Transfer(send, chunk_size=4096)
    return transfer


@pytest.mark.parametrize("floor", [None, "2028-01-01T00:00:00Z"])
def test_expiry_is_checked_against_a_time_floor_that_turning_the_clock_back_cannot_undo(tmp_path, floor):
    """The device has already seen 2028, after the package's expiry (2027-11-01); its clock now says 2026
    again. Without a floor the package would install; with it, it is refused as expired."""
    from edgekit_agent.protocol import Desired

    from edgekit.fleet.serve import sha256_file

    key, pub = pkgs.keys(tmp_path / "keys")
    pkg = pkgs.build(pkgs.source_dir(tmp_path / "src"), tmp_path / "p.edgepkg", key, counter=9, version="v9")
    store = Store(tmp_path / "data")
    if floor:
        store.write_state({"state": "idle", "installed": None, "installed_counter": 0, "time_floor": floor})
    events: list = []
    up = Updater(store, trust=TrustStore.load([pub]), profile=pkgs.PROFILE, transfer=local_transfer(pkg),
                 event=lambda kind, data: events.append((kind, data)))  # fmt: skip
    up.apply(Desired("tiny", "v9", sha256_file(pkg), 9, pkg.stat().st_size))
    if floor is None:
        assert up.state["state"] == "committed" and up.serving.manifest.version == "v9"
    else:
        assert up.state["state"] == "rolled_back" and up.serving is None
        assert "expired" in up.state["failed"]["reason"]
        assert store.read_state()["time_floor"] == floor  # the floor did not move back to the system clock


def test_the_time_floor_never_goes_backwards_and_counts_the_installed_packages_issue_time(tmp_path):
    from datetime import UTC, datetime

    store = Store(tmp_path / "data")
    # an installed package issued in 2031: the device's 2026 clock is certainly behind
    store.write_state({"state": "idle", "installed": {"issued_at": "2031-05-01T00:00:00Z"}, "installed_counter": 1})
    up = Updater(store, trust=TrustStore({}), profile=pkgs.PROFILE, transfer=Transfer(lambda _r: None))
    first = up.trusted_now()
    assert first == datetime(2031, 5, 1, tzinfo=UTC)
    assert Updater(store, trust=TrustStore({}), profile=pkgs.PROFILE, transfer=Transfer(lambda _r: None)
                   ).trusted_now() >= first  # fmt: skip


@pytest.mark.parametrize(
    ("corrupt", "installs", "corrupt_counts"),
    [
        (lambda offset, n: "link" if offset == 8192 and n == 1 else None, True, [0, 1]),
        (lambda offset, n: "link" if offset == 8192 else None, False, [0, 1, 1, 1]),
        (lambda offset, n: "server" if offset == 8192 else None, False, [0]),
    ],
    ids=["once-on-the-link", "always-on-the-link", "wrong-file-from-the-server"],
)
def test_a_download_that_does_not_hash_is_repaired_chunk_by_chunk_or_discarded(
    tmp_path, corrupt, installs, corrupt_counts
):
    """Chunks are checked by the one whole-file hash: on a mismatch only the chunks that do not match their
    hash are fetched again (at most 3 times); a file whose chunks all match yet not the package is dropped."""
    from edgekit_agent.protocol import Desired

    from edgekit.fleet.serve import sha256_file

    key, pub = pkgs.keys(tmp_path / "keys")
    pkg = pkgs.build(pkgs.source_dir(tmp_path / "src"), tmp_path / "p.edgepkg", key, counter=9, version="v9")
    store = Store(tmp_path / "data")
    events: list = []
    up = Updater(store, trust=TrustStore.load([pub]), profile=pkgs.PROFILE, transfer=local_transfer(pkg, corrupt),
                 event=lambda kind, data: events.append((kind, data)))  # fmt: skip
    desired = Desired("tiny", "v9", sha256_file(pkg), 9, pkg.stat().st_size)
    up.apply(desired)
    downloads = [d for k, d in events if k == "download"]
    assert [d["corrupt"] for d in downloads] == corrupt_counts
    assert all(d["chunks"] == 1 for d in downloads[1:])  # a repair fetches the bad chunk alone
    if installs:
        assert up.state["state"] == "committed" and up.serving.manifest.version == "v9"
    else:
        assert up.state["state"] == "rolled_back" and up.serving is None
        assert "does not hash" in up.state["failed"]["reason"] and up.state["failed"]["retryable"]
        assert not store.part(desired.sha256).exists()  # discarded: the next attempt starts clean
