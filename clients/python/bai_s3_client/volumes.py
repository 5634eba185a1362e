"""Volumes of the bai-s3 plugin for Backend.AI vfolders, through aiodocker.

One vfolder is one named volume, created once with its options (`POST /volumes/create`):
bai-s3 keeps the options under the name, so a container re-created later from nothing but
`name:target:perm` finds the same bucket, prefix and owner. A read-only mount of a vfolder
uses a twin volume `<name>.ro` with `ro=true`, so that the bucket is read-only at the s3fs
level too (EROFS for every writer), not only through Docker's bind.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import aiodocker
from aiodocker.exceptions import DockerError
from aiodocker.volumes import DockerVolume

__all__ = [
    "DRIVER",
    "VolumeConflict",
    "VfolderVolume",
    "volume_name",
    "ensure_volume",
    "mount_entry",
    "mount_spec",
    "mount_from_spec",
    "remove_unused_volumes",
]

#: The plugin's name as `docker plugin ls` shows it (without `:latest`).
DRIVER = "bai-s3"
#: Where Backend.AI puts vfolders in a kernel.
WORK_DIR = "/home/work"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_MOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class VolumeConflict(RuntimeError):
    """A volume of that name exists with another driver or other options; nothing was changed."""


@dataclass(frozen=True)
class VfolderVolume:
    """What a vfolder's volume is made of (the plugin's DriverOpts)."""

    vfid: str
    bucket: str
    prefix: str | None = None
    uid: int = 1000
    gid: int = 1000
    ro: bool = False
    backend: str = "default"

    @property
    def name(self) -> str:
        return volume_name(self.vfid, ro=self.ro)

    def driver_opts(self) -> dict[str, str]:
        opts = {
            "bucket": self.bucket,
            "uid": str(self.uid),
            "gid": str(self.gid),
            "ro": "true" if self.ro else "false",
            "backend": self.backend,
        }
        if self.prefix:
            opts["prefix"] = self.prefix
        return opts


def _vfid(vfid: str | uuid.UUID) -> str:
    s = vfid.hex if isinstance(vfid, uuid.UUID) else vfid
    if not isinstance(s, str) or not _ID.fullmatch(s):
        raise ValueError(
            f"vfolder id {vfid!r}: use a UUID or 1-100 letters, digits, '_' or '-' (it becomes "
            "part of a volume name)"
        )
    return s


def volume_name(vfid: str | uuid.UUID, *, ro: bool = False) -> str:
    """`bai-s3.<vfid>`, or `bai-s3.<vfid>.ro` for the read-only twin (UUIDs as 32 hex digits)."""
    return f"{DRIVER}.{_vfid(vfid)}" + (".ro" if ro else "")


def _driver_matches(found: str | None, driver: str) -> bool:
    # A managed plugin's volumes carry the plugin's reference, `bai-s3:latest`.
    return found in (driver, f"{driver}:latest")


def _mismatches(vol: VfolderVolume, status: dict[str, Any]) -> list[str]:
    want = {
        "bucket": vol.bucket,
        "prefix": vol.prefix.strip("/") if vol.prefix else None,
        "uid": vol.uid,
        "gid": vol.gid,
        "ro": vol.ro,
        "backend": vol.backend,
    }
    return [
        f"{k}: has {status.get(k)!r}, wanted {v!r}" for k, v in want.items() if status.get(k) != v
    ]


async def _check_volume(
    docker: aiodocker.Docker, name: str, vol: VfolderVolume, driver: str
) -> None:
    """Raises VolumeConflict unless volume `name` is `vol` as bai-s3 keeps it: this driver, these
    options (read back from the plugin's Status, not from what a creator claimed)."""
    info = await docker.volumes.get(name)
    shown = await info.show()
    if not _driver_matches(shown.get("Driver"), driver):
        raise VolumeConflict(
            f"volume {name} exists with driver {shown.get('Driver')!r}, not {driver!r}"
        )
    diff = _mismatches(vol, shown.get("Status") or {})
    if diff:
        raise VolumeConflict(f"volume {name} exists with other options: {'; '.join(diff)}")


async def ensure_volume(
    docker: aiodocker.Docker, vol: VfolderVolume, *, driver: str = DRIVER
) -> str:
    """Makes sure the vfolder's volume exists with exactly these options; returns its name.

    Safe to call at every kernel start: an existing volume with the same options is left as it
    is. A volume of that name with another driver or other options raises VolumeConflict (Docker
    itself would silently hand back the old one).
    """
    name = vol.name
    await docker.volumes.create({"Name": name, "Driver": driver, "DriverOpts": vol.driver_opts()})
    await _check_volume(docker, name, vol, driver)
    return name


def mount_entry(volume: str, name: str, *, read_only: bool = False) -> dict[str, Any]:
    """`HostConfig.Mounts[]` entry, in the shape of the agent's `process_mounts`.

    `name` is the vfolder's name in the kernel (`/home/work/<name>`). No VolumeOptions: the
    volume already exists with its options (see ensure_volume).
    """
    if not _MOUNT_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"mount name {name!r}: use letters, digits, '_', '.' or '-'")
    return {
        "Type": "volume",
        "Source": volume,
        "Target": f"{WORK_DIR}/{name}",
        "ReadOnly": read_only,
        "VolumeOptions": {},
    }


def mount_spec(entry: dict[str, Any]) -> str:
    """The `name:target:perm` string the agent saves for a kernel restart."""
    return f"{entry['Source']}:{entry['Target']}:{'ro' if entry['ReadOnly'] else 'rw'}"


def _parse_spec(spec: str) -> dict[str, Any]:
    """The mount entry back from a saved `name:target:perm`, unchecked."""
    try:
        source, target, perm = spec.split(":")
    except ValueError:
        raise ValueError(f"mount spec {spec!r}: expected name:target:perm") from None
    if perm not in ("ro", "rw") or not target.startswith("/") or not source:
        raise ValueError(f"mount spec {spec!r}: expected name:/absolute/target:ro|rw")
    return {
        "Type": "volume",
        "Source": source,
        "Target": target,
        "ReadOnly": perm == "ro",
        "VolumeOptions": {},
    }


async def mount_from_spec(
    docker: aiodocker.Docker, spec: str, vol: VfolderVolume, *, driver: str = DRIVER
) -> dict[str, Any]:
    """The mount entry back from a saved `name:target:perm`, once the volume is checked.

    The saved spec keeps only the volume's name, and a name proves nothing: between the agent's
    removal of a volume and its re-creation, anyone allowed to create volumes can make one of
    that name on another bucket. So the volume must be `vol` (the vfolder the agent restarts the
    kernel with), with this driver and exactly its options, or VolumeConflict is raised and no
    entry is returned.
    """
    entry = _parse_spec(spec)
    if entry["Source"] != vol.name:
        raise VolumeConflict(
            f"mount spec {spec!r} names volume {entry['Source']!r}, not the vfolder's {vol.name!r}"
        )
    await _check_volume(docker, vol.name, vol, driver)
    return entry


async def remove_unused_volumes(
    docker: aiodocker.Docker, *, keep: Iterable[str] = (), driver: str = DRIVER
) -> list[str]:
    """Removes this driver's `bai-s3.*` volumes that no container (running or stopped) uses.

    Volumes named in `keep` (sessions about to start) stay. A volume a container takes between
    the listing and the removal is left alone (Docker answers 409). The data in the bucket is
    never touched: removing a volume only forgets the name. Returns the names removed.
    """
    keep = set(keep)
    listed = await docker.volumes.list(filters={"dangling": ["true"]})
    removed = []
    for v in listed.get("Volumes") or []:
        name = v.get("Name", "")
        if not name.startswith(f"{DRIVER}.") or name in keep:
            continue
        if not _driver_matches(v.get("Driver"), driver):
            continue
        try:
            await DockerVolume(docker, name).delete()
        except DockerError as e:
            if e.status in (404, 409):  # gone already, or in use again
                continue
            raise
        removed.append(name)
    return removed
