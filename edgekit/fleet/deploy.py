"""Tell devices what to run: a retained ``desired`` message per device, recorded in the store.

The host checks what it can before a device refuses: the package is readable, its manifest's profile
matches each target's reported profile, and the package is in the repository ``edgekit serve`` answers
from (it is copied there if not). Signature and counter checks stay with the device, which is the party
that must not be fooled.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.errors import PackageError
from edgekit_agent.protocol import Desired
from edgekit_agent.verify import read_manifest

from edgekit.atomic import atomic_file
from edgekit.errors import EdgekitError
from edgekit.fleet import mqtt
from edgekit.fleet.serve import sha256_file
from edgekit.fleet.store import Store


class DeployInvalid(EdgekitError):
    pass


@dataclass(frozen=True)
class Release:
    """A package as the fleet sees it: where it is in the repository and the desired message naming it."""

    path: Path
    desired: Desired
    profile: str

    def to_json(self) -> dict[str, Any]:
        d = self.desired
        return {"path": str(self.path), "name": d.name, "version": d.version, "sha256": d.sha256,
                "counter": d.counter, "size": d.size, "profile": self.profile}  # fmt: skip


def release(package: Path, repository: Path) -> Release:
    """Read ``package``'s manifest and make sure the repository holds the same bytes."""
    try:
        raw = read_manifest(package)
    except PackageError as exc:
        raise DeployInvalid(f"{package}: {exc}; give a .edgepkg written by edgekit package --key") from None
    try:
        name, version, counter, profile = raw["name"], str(raw["version"]), int(raw["counter"]), str(raw["profile"])
    except (KeyError, TypeError, ValueError):
        raise DeployInvalid(f"{package}: the manifest lacks name/version/counter/profile; re-sign it") from None
    sha = sha256_file(package)
    repository.mkdir(parents=True, exist_ok=True)
    target = repository / package.name
    if package.resolve() != target.resolve():
        if target.exists() and sha256_file(target) != sha:
            raise DeployInvalid(
                f"{target} already exists with different bytes; rename the package or remove the old one"
            )
        if not target.exists():
            with open(package, "rb") as src, atomic_file(target) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return Release(target, Desired(name, version, sha, counter, target.stat().st_size), profile)


def targets(store: Store, fleet: str, *, devices: list[str], group: str | None, profile: str) -> list[dict[str, Any]]:
    """The device rows to deploy to; refuses unknown devices, empty groups and profile mismatches."""
    if bool(devices) == bool(group):
        raise DeployInvalid("give --device D (repeatable) or --group G, not both and not neither")
    rows = [store.device(fleet, d) for d in devices] if devices else store.group(fleet, group or "")
    if not rows:
        raise DeployInvalid(
            f"group {group!r} has no devices in fleet {fleet!r}; groups are profiles, 'all', label "
            "values of 'group', or key=value labels (edgekit fleet label D key=value)"
        )
    wrong = [f"{r['device']} ({r['profile']})" for r in rows if r["profile"] not in (None, profile)]
    if wrong:
        raise DeployInvalid(
            f"the package is for profile {profile} but {', '.join(wrong[:5])} run another profile; "
            "package the model for that profile or narrow the group"
        )
    return rows


def publish_desired(broker: str, fleet: str, devices: list[str], desired: Desired | None) -> None:
    """Retained QoS1 ``desired`` for each device; returns once the broker has acknowledged every one.

    ``None`` clears the retained message (a device ignores an empty one and keeps what it runs).
    """
    with mqtt.DesiredPublisher(broker) as publisher:
        publisher.publish(fleet, devices, desired)


def deploy(store: Store, broker: str, fleet: str, rel: Release, devices: list[str], rollout: str | None = None) -> None:
    publish_desired(broker, fleet, devices, rel.desired)
    for device in devices:
        store.record_deployment(fleet, device, rel.desired, rel.path, rollout)


def deploy_package(
    store: Store, broker: str, fleet: str, package: Path, repository: Path, *, devices: list[str], group: str | None
) -> tuple[Release, list[str]]:
    """``edgekit fleet deploy``: check the package and the targets, then publish and record; returns the
    release and the devices told. Nothing is published when a check fails."""
    rel = release(package, repository)
    names = [r["device"] for r in targets(store, fleet, devices=devices, group=group, profile=rel.profile)]
    deploy(store, broker, fleet, rel, names)
    return rel, names
