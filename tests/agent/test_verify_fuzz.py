"""Property: no change to the bytes of a valid package is ever accepted, and only PackageError escapes."""

from __future__ import annotations

import io

import pkgs
import pytest
from edgekit_agent.errors import PackageError
from edgekit_agent.trust import TrustStore
from edgekit_agent.verify import verify_package
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration
_CACHE: dict[str, object] = {}


def valid_package(tmp_path_factory) -> tuple[bytes, TrustStore]:
    if not _CACHE:
        root = tmp_path_factory.mktemp("fuzz")
        key, pub = pkgs.keys(root / "keys")
        package = pkgs.build(pkgs.source_dir(root / "src"), root / "p.edgepkg", key)
        _CACHE.update(data=package.read_bytes(), trust=TrustStore.load([pub]))
    return _CACHE["data"], _CACHE["trust"]  # type: ignore[return-value]


def flip(data: bytes, at: int, mask: int) -> bytes:
    out = bytearray(data)
    out[at % len(out)] ^= mask
    return bytes(out)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 30), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 600)),
)


def mutate(data: bytes, op: str, at: int, arg: int) -> bytes:
    at %= len(data)
    if op == "flip":
        return flip(data, at, arg)
    if op == "truncate":
        return data[:at]
    if op == "insert":
        return data[:at] + bytes([arg]) + data[at:]
    return data[:at] + data[at + arg :]


def check(data: bytes, trust: TrustStore) -> None:
    with pytest.raises(PackageError):
        verify_package(io.BytesIO(data), trust=trust, now=pkgs.NOW, profile=pkgs.PROFILE)


def test_the_unmutated_package_is_accepted(tmp_path_factory):
    data, trust = valid_package(tmp_path_factory)
    assert verify_package(io.BytesIO(data), trust=trust, now=pkgs.NOW, profile=pkgs.PROFILE).manifest.counter == 7


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutations, min_size=1, max_size=3))
def test_mutated_packages_are_always_refused(tmp_path_factory, ops):
    data, trust = valid_package(tmp_path_factory)
    mutated = data
    for op in ops:
        mutated = mutate(mutated, *op) if mutated else mutated
    if mutated == data:  # e.g. an insert then a delete that undid it
        return
    check(mutated, trust)


@pytest.mark.parametrize("region", ["headers", "padding"])
def test_every_single_byte_flip_in_headers_and_padding_is_refused(tmp_path_factory, region):
    """The bytes lenient tar readers ignore (after a NUL, checksum tail, padding, end blocks) are covered too."""
    from edgekit_agent.tarfmt import BLOCK

    data, trust = valid_package(tmp_path_factory)
    manifest, files = pkgs.members_from_bytes(data)
    spots = []
    pos = 0
    for _, size in [("manifest.json", len(manifest)), ("manifest.sig", 64), *((n, len(d)) for n, d in files)]:
        if region == "headers":
            spots += range(pos, pos + BLOCK)
        else:
            spots += range(pos + BLOCK + size, pos + BLOCK + size + (-size % BLOCK))
        pos += BLOCK + size + (-size % BLOCK)
    if region == "padding":
        spots += range(pos, len(data))  # the two end-of-archive blocks
    for at in spots:
        check(flip(data, at, 0x20), trust)
