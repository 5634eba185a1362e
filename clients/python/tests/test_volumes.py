"""Names and mount entries, without Docker (the e2e tests cover the calls)."""

import uuid

import pytest

from bai_s3_client import VfolderVolume, mount_entry, mount_spec, volume_name
from bai_s3_client.volumes import _parse_spec


def test_names():
    u = uuid.UUID("0123456789abcdef0123456789abcdef")
    assert volume_name(u) == "bai-s3.0123456789abcdef0123456789abcdef"
    assert volume_name("abc", ro=True) == "bai-s3.abc.ro"
    for bad in ["", "a/b", "a:b", "a,b", "..", "a b", "x" * 101]:
        with pytest.raises(ValueError):
            volume_name(bad)


def test_driver_opts():
    v = VfolderVolume("f00", bucket="team", prefix="vfolders/f00", ro=True, backend="sp")
    assert v.name == "bai-s3.f00.ro"
    assert v.driver_opts() == {
        "bucket": "team",
        "prefix": "vfolders/f00",
        "uid": "1000",
        "gid": "1000",
        "ro": "true",
        "backend": "sp",
    }
    assert "prefix" not in VfolderVolume("f00", bucket="team").driver_opts()


def test_mount_entry_shape_and_spec_round_trip():
    e = mount_entry("bai-s3.f00", "data", read_only=True)
    assert e == {
        "Type": "volume",
        "Source": "bai-s3.f00",
        "Target": "/home/work/data",
        "ReadOnly": True,
        "VolumeOptions": {},
    }
    assert mount_spec(e) == "bai-s3.f00:/home/work/data:ro"
    assert _parse_spec(mount_spec(e)) == e
    for bad in ["a:b", "a:/b:rx", ":/b:ro", "a:b:ro"]:
        with pytest.raises(ValueError):
            _parse_spec(bad)
    for bad in ["..", "a/b", ""]:
        with pytest.raises(ValueError):
            mount_entry("bai-s3.f00", bad)
