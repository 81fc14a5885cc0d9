"""The bad-input catalogue of issue 4: every refusal has its reason code, writes nothing and keeps the old install."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pkgs
import pytest
from edgekit_agent.errors import PackageError
from edgekit_agent.manifest import dumps
from edgekit_agent.trust import TrustStore
from edgekit_agent.verify import Limits, verify_package

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    key, pub = pkgs.keys(root / "keys")
    other_key, other_pub = pkgs.keys(root / "keys", name="other")
    src = pkgs.source_dir(root / "src")
    package = pkgs.build(src, root / "good.edgepkg", key)
    manifest, files = pkgs.members(package)
    return {
        "key": key,
        "pub": pub,
        "other_key": other_key,
        "other_pub": other_pub,
        "package": package,
        "bytes": package.read_bytes(),
        "manifest": manifest,
        "files": files,
    }


def verify(data: bytes, tmp_path: Path, world, **kw):
    """Verify ``data`` into a fresh directory next to a previous install, as the agent does."""
    trust = kw.pop("trust", None) or TrustStore.load([world["pub"]])
    kw.setdefault("now", pkgs.NOW)
    kw.setdefault("profile", pkgs.PROFILE)
    package = tmp_path / "in.edgepkg"
    package.write_bytes(data)
    installs = tmp_path / "versions"
    (installs / "current").mkdir(parents=True, exist_ok=True)
    (installs / "current" / "model.onnx").write_bytes(b"the model that is serving")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        return verify_package(package, trust=trust, dest=installs / "new", **kw)
    finally:
        after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        if not (installs / "new").exists():  # refused: nothing new anywhere, the old install untouched
            assert after == before
            assert (installs / "current" / "model.onnx").read_bytes() == b"the model that is serving"


def refused(reason: str, data: bytes, tmp_path: Path, world, **kw) -> PackageError:
    with pytest.raises(PackageError) as info:
        verify(data, tmp_path, world, **kw)
    assert info.value.reason == reason, info.value.one_line()
    line = info.value.one_line()
    assert "\n" not in line and reason in line
    return info.value


def test_valid_package_unpacks_exactly_the_signed_files(tmp_path, world):
    result = verify(world["bytes"], tmp_path, world)
    assert result.signature_checked and result.manifest.counter == 7
    assert result.sha256 == hashlib.sha256(world["bytes"]).hexdigest()
    unpacked = sorted(str(p.relative_to(result.directory)) for p in result.directory.rglob("*") if p.is_file())
    assert unpacked == ["manifest.json", "manifest.sig", "model.onnx", "sample/input_0.npy", "sample/output_0.npy"]
    for name, data in world["files"]:
        assert (result.directory / name).read_bytes() == data


def test_unpacked_model_runs_and_matches_the_sample(tmp_path, world):
    import numpy as np
    import onnxruntime as ort

    d = verify(world["bytes"], tmp_path, world).directory
    out = ort.InferenceSession(str(d / "model.onnx")).run(None, {"x": np.load(d / "sample/input_0.npy")})[0]
    np.testing.assert_allclose(out, np.load(d / "sample/output_0.npy"), rtol=1e-5)


def test_tampered_model_bytes(tmp_path, world):
    data = bytearray(world["bytes"])
    model = dict(world["files"])["model.onnx"]
    at = bytes(data).index(model) + len(model) // 2
    data[at] ^= 0x01
    refused("hash-mismatch", bytes(data), tmp_path, world)


def test_tampered_manifest(tmp_path, world):
    text = world["bytes"]
    tampered = text.replace(b'"counter": 7', b'"counter": 9', 1)
    assert tampered != text
    refused("bad-signature", tampered, tmp_path, world)


def test_signature_by_untrusted_key(tmp_path, world):
    data = pkgs.craft(world["manifest"] | {"key_id": _kid(world["other_pub"])}, world["files"], world["other_key"])
    err = refused("untrusted-key", data, tmp_path, world)
    assert _kid(world["other_pub"]) in str(err)


def test_signature_by_revoked_key(tmp_path, world):
    store = TrustStore.load([world["pub"]], revoked=[world["manifest"]["key_id"]])
    refused("revoked-key", world["bytes"], tmp_path, world, trust=store)


def test_revoked_txt_in_a_trust_directory(tmp_path, world):
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    (trust_dir / "a.pub").write_bytes(world["pub"].read_bytes())
    (trust_dir / "b.pub").write_bytes(world["other_pub"].read_bytes())
    (trust_dir / "revoked.txt").write_text(f"{world['manifest']['key_id']}  # leaked 2026-11\n")
    refused("revoked-key", world["bytes"], tmp_path, world, trust=TrustStore.load([trust_dir]))


def test_two_trusted_keys_either_signs(tmp_path, world):
    store = TrustStore.load([world["pub"], world["other_pub"]])
    data = pkgs.craft(world["manifest"] | {"key_id": _kid(world["other_pub"])}, world["files"], world["other_key"])
    assert verify(data, tmp_path, world, trust=store).manifest.key_id == _kid(world["other_pub"])


def test_missing_signature(tmp_path, world):
    refused(
        "missing-signature", pkgs.craft(world["manifest"], world["files"], world["key"], sig=False), tmp_path, world
    )


def test_signature_with_the_wrong_length(tmp_path, world):
    data = pkgs.raw_tar([("manifest.json", dumps(world["manifest"])), ("manifest.sig", b"x" * 10), *world["files"]])
    refused("bad-signature", data, tmp_path, world)


@pytest.mark.parametrize("cut", [1, 511, 512, 700, 3000, -1025, -1024, -1])
def test_truncated_package(tmp_path, world, cut):
    refused("truncated", world["bytes"][:cut], tmp_path, world)


def test_bytes_after_the_end_of_the_archive(tmp_path, world):
    refused("bad-entry", world["bytes"] + b"\0" * 512, tmp_path, world)


def test_empty_file(tmp_path, world):
    assert "empty" in str(refused("not-a-package", b"", tmp_path, world))


def test_zip_file(tmp_path, world):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in world["files"]:
            z.writestr(name, data)
    assert "zip" in str(refused("not-a-package", buf.getvalue(), tmp_path, world))


def test_not_a_tar(tmp_path, world):
    refused("not-a-package", os.urandom(4096), tmp_path, world)


def test_gzip_bomb_is_refused_without_decompressing(tmp_path, world):
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB of zeros in ~64 kB
    assert len(bomb) < 100_000
    assert "gzip" in str(refused("not-a-package", bomb, tmp_path, world))


def test_declared_sizes_over_the_limit_are_refused_before_reading(tmp_path, world):
    huge = pkgs.relist(world["manifest"], world["files"])
    huge["files"][0]["size"] = 50 << 30  # 50 GiB claimed, nothing like it present
    refused("size-limit", pkgs.craft(huge, world["files"], world["key"]), tmp_path, world)


def test_small_limits_refuse_a_normal_package(tmp_path, world):
    refused("size-limit", world["bytes"], tmp_path, world, limits=Limits(max_file_bytes=100))
    refused("size-limit", world["bytes"], tmp_path, world, limits=Limits(max_total_bytes=1000))
    refused("size-limit", world["bytes"], tmp_path, world, limits=Limits(max_files=2))


def test_tar_header_size_disagreeing_with_the_manifest(tmp_path, world):
    files = [(n, d + b"extra" if n == "model.onnx" else d) for n, d in world["files"]]
    refused("hash-mismatch", pkgs.craft(world["manifest"], files, world["key"]), tmp_path, world)


def test_expired(tmp_path, world):
    refused("expired", world["bytes"], tmp_path, world, now=pkgs.later(400))


def test_not_yet_valid(tmp_path, world):
    refused("not-yet-valid", world["bytes"], tmp_path, world, now=pkgs.ISSUED - pkgs.timedelta(days=1))


@pytest.mark.parametrize("installed", [7, 8, 100])
def test_counter_not_above_the_installed_one(tmp_path, world, installed):
    refused("replayed-counter", world["bytes"], tmp_path, world, min_counter=installed + 1)


def test_counter_above_the_installed_one_is_accepted(tmp_path, world):
    assert verify(world["bytes"], tmp_path, world, min_counter=7).manifest.counter == 7


def test_wrong_target_profile(tmp_path, world):
    assert "rpi4" in str(refused("wrong-profile", world["bytes"], tmp_path, world, profile="rpi4"))


@pytest.mark.parametrize("name", ["../evil.onnx", "sample/../../evil", "/etc/cron.d/evil", "./model.onnx"])
def test_entry_escaping_the_package(tmp_path, world, name):
    files = [*world["files"], (name, b"payload")]
    refused("unsafe-path", pkgs.craft(world["manifest"], files, world["key"]), tmp_path, world)


@pytest.mark.parametrize(
    ("kind", "reason_text"),
    [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hardlink"), (tarfile.CHRTYPE, "device"),
     (tarfile.BLKTYPE, "device"), (tarfile.FIFOTYPE, "fifo"), (tarfile.DIRTYPE, "directory")],
)  # fmt: skip
def test_link_and_device_entries(tmp_path, world, kind, reason_text):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("model.onnx")
        info.type = kind
        info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        tar.addfile(info)
    link = buf.getvalue()[:512]
    head = pkgs.craft(world["manifest"], [], world["key"])[:-1024]
    err = refused("link-entry", head + link + b"\0" * 1024, tmp_path, world)
    assert reason_text in str(err)


def test_file_present_but_not_in_the_manifest(tmp_path, world):
    files = sorted([*world["files"], ("sample/zzz.bin", b"smuggled")])
    refused("unlisted-file", pkgs.craft(world["manifest"], files, world["key"]), tmp_path, world)


def test_file_in_the_manifest_but_missing(tmp_path, world):
    files = [f for f in world["files"] if f[0] != "sample/output_0.npy"]
    refused("missing-file", pkgs.craft(world["manifest"], files, world["key"]), tmp_path, world)


def test_duplicate_entries(tmp_path, world):
    files = [world["files"][0], *world["files"]]
    refused("duplicate-entry", pkgs.craft(world["manifest"], files, world["key"]), tmp_path, world)


def test_second_manifest_entry_is_a_duplicate(tmp_path, world):
    files = [*world["files"], ("manifest.json", b"{}")]
    refused("duplicate-entry", pkgs.craft(world["manifest"], files, world["key"]), tmp_path, world)


def test_entries_out_of_order(tmp_path, world):
    files = list(reversed(world["files"]))
    refused("out-of-order", pkgs.craft(world["manifest"], files, world["key"]), tmp_path, world)


def test_onnx_external_data_inside_the_package_is_accepted(tmp_path, world):
    model, weights = pkgs.tiny_onnx(external="model.onnx.data")
    files = sorted([("model.onnx", model), ("model.onnx.data", weights), *world["files"][1:]])
    manifest = pkgs.relist(world["manifest"], files)
    result = verify(pkgs.craft(manifest, files, world["key"]), tmp_path, world)
    import numpy as np
    import onnxruntime as ort

    d = result.directory
    out = ort.InferenceSession(str(d / "model.onnx")).run(None, {"x": np.load(d / "sample/input_0.npy")})[0]
    np.testing.assert_allclose(out, np.load(d / "sample/output_0.npy"), rtol=1e-5)


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "weights/../../x", "not-in-package.bin"])
def test_onnx_external_data_pointing_outside_the_package(tmp_path, world, location):
    model, _ = pkgs.tiny_onnx(external=location)
    files = [("model.onnx", model), *world["files"][1:]]
    refused("external-data", pkgs.craft(pkgs.relist(world["manifest"], files), files, world["key"]), tmp_path, world)


def test_unknown_format_version(tmp_path, world):
    data = pkgs.craft(world["manifest"] | {"format": "edgepkg/2"}, world["files"], world["key"])
    assert "upgrade" in str(refused("unsupported-format", data, tmp_path, world))


def test_unknown_manifest_field(tmp_path, world):
    data = pkgs.craft(world["manifest"] | {"run_this": "rm -rf /"}, world["files"], world["key"])
    assert "run_this" in str(refused("bad-manifest", data, tmp_path, world))


def test_unknown_nested_field(tmp_path, world):
    manifest = world["manifest"] | {"runtime": world["manifest"]["runtime"] | {"priority": "high"}}
    refused("bad-manifest", pkgs.craft(manifest, world["files"], world["key"]), tmp_path, world)


def test_duplicate_json_keys_are_ambiguous(tmp_path, world):
    text = dumps(world["manifest"]).replace(b'"counter": 7,', b'"counter": 7,\n  "counter": 9,', 1)
    from edgekit.keys import load_signing_key

    sig = load_signing_key(world["key"])[0].sign(text)
    data = pkgs.raw_tar([("manifest.json", text), ("manifest.sig", sig), *world["files"]])
    refused("bad-manifest", data, tmp_path, world)


def test_destination_must_be_fresh(tmp_path, world):
    (tmp_path / "exists").mkdir()
    with pytest.raises(PackageError) as info:
        verify_package(world["package"], trust=TrustStore.load([world["pub"]]), now=pkgs.NOW, dest=tmp_path / "exists")
    assert info.value.reason == "destination-exists"


def test_verification_reads_the_package_once_front_to_back(world):
    class OneWay(io.RawIOBase):
        """A pipe-like stream: no seek, counts every byte handed out."""

        def __init__(self, data: bytes) -> None:
            self._data, self.pos, self.reads = data, 0, 0

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def read(self, n: int = -1) -> bytes:
            chunk = self._data[self.pos : self.pos + n]
            self.pos += len(chunk)
            self.reads += 1
            return chunk

    stream = OneWay(world["bytes"])
    result = verify_package(stream, trust=TrustStore.load([world["pub"]]), now=pkgs.NOW)
    assert stream.pos == len(world["bytes"]) == result.size
    assert stream.reads <= 2  # one 1 MiB read holds this whole package, one more sees the end


def _kid(pub: Path) -> str:
    from edgekit_agent.trust import key_id, load_public_key

    return key_id(load_public_key(pub))


def test_a_full_disk_while_unpacking_is_an_io_error_that_leaves_nothing(tmp_path, world):
    """The file-size limit makes the kernel refuse writes (EFBIG) as a full disk would (ENOSPC)."""
    import subprocess
    import sys
    import textwrap

    big_model, _ = pkgs.tiny_onnx(size=256)  # 256 KiB of weights
    files = sorted([("model.onnx", big_model), *world["files"][1:]])
    package = tmp_path / "big.edgepkg"
    package.write_bytes(pkgs.craft(pkgs.relist(world["manifest"], files), files, world["key"]))
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from datetime import datetime
        from edgekit_agent.errors import PackageError
        from edgekit_agent.trust import TrustStore
        from edgekit_agent.verify import verify_package
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            verify_package({str(package)!r}, trust=TrustStore.load([{str(world["pub"])!r}]),
                           now=datetime.fromisoformat({pkgs.NOW.isoformat()!r}), dest={str(tmp_path / "new")!r})
        except PackageError as exc:
            print(exc.reason, exc.one_line())
            sys.exit(0)
        sys.exit("accepted")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("io-error") and "free space" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.edgepkg"]
