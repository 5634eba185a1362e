"""The backends file writer: what the daemon reads back, atomic replacement, 0600, escaping."""

import os
import stat
import threading
import tomllib

import pytest

from bai_s3_client import Backend, BackendsFileError, remove_backend, write_backend
from bai_s3_client.backends import dumps

SECRET = "SKsecret/with+odd=chars"


def backend(**kw):
    base = dict(endpoint="http://127.0.0.1:8333", access_key="AK1", secret_key=SECRET)
    base.update(kw)
    return Backend(**base)


def read(path):
    return tomllib.loads(path.read_text())


def test_new_file_is_0600_with_kebab_case_keys(tmp_path):
    path = tmp_path / "etc" / "backends.toml"
    write_backend("storage-proxy", backend(region="kr-1", path_style=False), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read(path) == {
        "backends": {
            "storage-proxy": {
                "endpoint": "http://127.0.0.1:8333",
                "region": "kr-1",
                "access-key": "AK1",
                "secret-key": SECRET,
                "path-style": False,
            }
        }
    }
    # Only the file itself is left in the folder (no temporary file).
    assert os.listdir(path.parent) == ["backends.toml"]


def test_update_keeps_other_backends_and_their_keys(tmp_path):
    path = tmp_path / "backends.toml"
    path.write_text(
        '[backends.default]\nendpoint = "https://s3.example"\naccess-key = "A"\n'
        'secret-key = "S"\nca-file = "/etc/bai-s3/ca.pem"\n'
    )
    os.chmod(path, 0o644)
    write_backend("sp", backend(), path)
    write_backend("sp", backend(endpoint="http://10.0.0.1:9000"), path)
    got = read(path)["backends"]
    assert got["default"] == {
        "endpoint": "https://s3.example",
        "access-key": "A",
        "secret-key": "S",
        "ca-file": "/etc/bai-s3/ca.pem",
    }
    assert got["sp"]["endpoint"] == "http://10.0.0.1:9000"
    # A too-open file is replaced by a 0600 one (the daemon refuses group/other access).
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_values_that_need_escaping_read_back_exactly(tmp_path):
    path = tmp_path / "backends.toml"
    nasty = 'a"b\\c\'d#e]f[g\u00e9\u2603'
    write_backend("x", backend(access_key=nasty, secret_key=nasty + "="), path)
    got = read(path)["backends"]["x"]
    assert got["access-key"] == nasty
    assert got["secret-key"] == nasty + "="
    # A key that is not bare is quoted; control characters in values are escaped.
    text = dumps({"odd name": {"k": "line\nbreak\x01\x7f"}})
    assert tomllib.loads(text) == {"backends": {"odd name": {"k": "line\nbreak\x01\x7f"}}}


def test_each_rename_replaces_the_file_whole(tmp_path):
    """The daemon may read at any moment: it must see the old or the new file, never a mix."""
    path = tmp_path / "backends.toml"
    write_backend("b0", backend(), path)
    inode = path.stat().st_ino
    write_backend("b1", backend(), path)
    assert path.stat().st_ino != inode, "the file was rewritten in place, not replaced"


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "backends.toml"
    names = [f"b{i}" for i in range(16)]
    threads = [threading.Thread(target=write_backend, args=(n, backend(), path)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(read(path)["backends"]) == sorted(names)


@pytest.mark.parametrize(
    "name,kw,words",
    [
        ("bad name", {}, "backend name"),
        ("-x", {}, "backend name"),
        ("a" * 65, {}, "backend name"),
        ("ok", {"endpoint": "s3.example"}, "http:// or https://"),
        ("ok", {"endpoint": "http://a,b"}, "endpoint must be non-empty"),
        ("ok", {"region": "us east"}, "region must be non-empty"),
        ("ok", {"secret_key": ""}, "must not be empty"),
        ("ok", {"access_key": "a\nb"}, "control characters"),
    ],
)
def test_refusals_name_the_problem_and_leave_the_file_alone(tmp_path, name, kw, words):
    path = tmp_path / "backends.toml"
    write_backend("keep", backend(), path)
    before = path.read_bytes()
    with pytest.raises(BackendsFileError) as e:
        write_backend(name, backend(**kw), path)
    assert words in str(e.value)
    assert SECRET not in str(e.value)
    assert path.read_bytes() == before


def test_broken_file_is_not_overwritten(tmp_path):
    path = tmp_path / "backends.toml"
    path.write_text('[backends.x]\nsecret-key = "SKtopsecret\n')
    with pytest.raises(BackendsFileError) as e:
        write_backend("y", backend(), path)
    assert "not valid TOML" in str(e.value)
    assert "SKtopsecret" not in str(e.value)
    assert "SKtopsecret" in path.read_text()


def test_remove_backend(tmp_path):
    path = tmp_path / "backends.toml"
    write_backend("a", backend(), path)
    write_backend("b", backend(), path)
    assert remove_backend("a", path) is True
    assert remove_backend("a", path) is False
    assert list(read(path)["backends"]) == ["b"]


def test_repr_hides_the_secret():
    assert SECRET not in repr(backend())
