"""bai-s3 client kit: what Backend.AI's agent needs to mount object-storage vfolders through the
bai-s3 Docker volume plugin (see "Backend.AI integration" in bai-s3's README)."""

from .backends import Backend, BackendsFileError, remove_backend, write_backend
from .volumes import (
    DRIVER,
    VfolderVolume,
    VolumeConflict,
    ensure_volume,
    mount_entry,
    mount_from_spec,
    mount_spec,
    remove_unused_volumes,
    volume_name,
)

__all__ = [
    "DRIVER",
    "Backend",
    "BackendsFileError",
    "VfolderVolume",
    "VolumeConflict",
    "ensure_volume",
    "mount_entry",
    "mount_from_spec",
    "mount_spec",
    "remove_backend",
    "remove_unused_volumes",
    "volume_name",
    "write_backend",
]
