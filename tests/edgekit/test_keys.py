"""``edgekit keys init|show`` and loading keys for signing."""

from __future__ import annotations

import json
import stat

import pytest

from edgekit.errors import KeyInvalid
from edgekit.keys import load_signing_key


def test_init_writes_a_private_key_only_its_owner_can_read(cli, tmp_path):
    code, out, err = cli("keys", "init", "--dir", tmp_path / "k", "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert stat.S_IMODE((tmp_path / "k" / "edgekit.key").stat().st_mode) == 0o600
    assert info["key_id"].startswith("ed25519:") and len(info["key_id"]) == len("ed25519:") + 16
    assert not info["encrypted"]
    code, out, _ = cli("keys", "show", "--dir", tmp_path / "k", "--format", "json")
    assert code == 0 and json.loads(out)["key_id"] == info["key_id"]
    assert load_signing_key(tmp_path / "k" / "edgekit.key")[1] == info["key_id"]


def test_init_never_overwrites_a_key(cli, tmp_path):
    assert cli("keys", "init", "--dir", tmp_path)[0] == 0
    before = (tmp_path / "edgekit.key").read_bytes()
    code, _out, err = cli("keys", "init", "--dir", tmp_path)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "edgekit.key").read_bytes() == before


def test_several_named_keys_have_distinct_ids(cli, tmp_path):
    ids = set()
    for name in ("2026", "2027"):
        _code, out, _ = cli("keys", "init", "--dir", tmp_path, "--name", name, "--format", "json")
        ids.add(json.loads(out)["key_id"])
    assert len(ids) == 2


def test_passphrase_encrypts_the_private_key(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_KEY_PASSPHRASE", "correct horse")
    code, out, err = cli("keys", "init", "--dir", tmp_path, "--passphrase", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["encrypted"]
    assert b"ENCRYPTED" in (tmp_path / "edgekit.key").read_bytes()
    _key, kid = load_signing_key(tmp_path / "edgekit.key")
    assert kid == json.loads(out)["key_id"]
    monkeypatch.delenv("EDGEKIT_KEY_PASSPHRASE")
    with pytest.raises(KeyInvalid, match="EDGEKIT_KEY_PASSPHRASE"):
        load_signing_key(tmp_path / "edgekit.key")
    with pytest.raises(KeyInvalid, match="wrong passphrase"):
        load_signing_key(tmp_path / "edgekit.key", passphrase="battery staple")


def test_a_public_key_is_not_a_signing_key(cli, tmp_path):
    cli("keys", "init", "--dir", tmp_path)
    with pytest.raises(KeyInvalid, match="not a PEM private key"):
        load_signing_key(tmp_path / "edgekit.pub")


def test_show_without_a_key_says_how_to_make_one(cli, tmp_path):
    code, _, err = cli("keys", "show", "--dir", tmp_path)
    assert code == 2 and "edgekit keys init" in err
