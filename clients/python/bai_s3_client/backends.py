"""The bai-s3 backends file (TOML): written atomically, root-only, one backend at a time.

The daemon refuses a backends file readable by group or others and re-reads the file when it
changes, so a writer must never leave a half-written or too-open file in place, even for a
moment: every write goes to a new 0600 file in the same folder, which is fsynced and then
renamed over the old one. Two writers in one host (an agent and an operator's script) are
serialised by an exclusive lock on the folder, so neither loses the other's backend.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Backend", "BackendsFileError", "write_backend", "remove_backend", "dumps"]

#: The plugin's default location of the backends file on the host (its `config` mount).
DEFAULT_PATH = Path("/etc/bai-s3/backends.toml")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _control(c: str) -> bool:
    """A control character, as the daemon's Rust `char::is_control` says (category Cc)."""
    return unicodedata.category(c) == "Cc"


class BackendsFileError(ValueError):
    """A backend or backends file bai-s3 would refuse; the message says what and what is allowed.

    Messages never contain a secret key.
    """


@dataclass(frozen=True)
class Backend:
    """One S3 endpoint and its credentials, as the storage proxy hands them to the agent."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    path_style: bool = True
    #: CA bundle (path inside the plugin, e.g. under /etc/bai-s3) for a private TLS endpoint.
    ca_file: str | None = None

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return (
            f"Backend(endpoint={self.endpoint!r}, access_key={self.access_key!r}, "
            f"secret_key='<redacted>', region={self.region!r}, path_style={self.path_style!r}, "
            f"ca_file={self.ca_file!r})"
        )

    def check(self, name: str) -> None:
        """Refuses what the daemon would refuse, before the file is touched."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BackendsFileError(
                f"backend name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
                "letter or digit"
            )
        # Before any message that quotes the endpoint: user info may be a password (the daemon
        # refuses it too: it would reach s3fs's argv and error messages).
        authority = self.endpoint.split("://", 1)[-1]
        authority = re.split(r"[/?#]", authority, maxsplit=1)[0]
        if "@" in authority:
            raise BackendsFileError(
                f"backend {name!r}: endpoint must not carry a user name or password "
                '("user:pass@" before the host); put the credentials in access-key and secret-key'
            )
        if not self.endpoint.startswith(("http://", "https://")):
            raise BackendsFileError(
                f"backend {name!r}: endpoint {self.endpoint!r} must start with http:// or https://"
            )
        for what, value in (("endpoint", self.endpoint), ("region", self.region)):
            if not value or any(c == "," or c.isspace() or _control(c) for c in value):
                raise BackendsFileError(
                    f"backend {name!r}: {what} must be non-empty, without ',', spaces or "
                    "control characters"
                )
        if not self.access_key or not self.secret_key:
            raise BackendsFileError(f"backend {name!r}: access-key and secret-key must not be empty")
        for what, value in (("access-key", self.access_key), ("secret-key", self.secret_key)):
            if any(_control(c) for c in value):
                raise BackendsFileError(
                    f"backend {name!r}: {what} must not contain control characters"
                )
        if self.ca_file is not None and (not self.ca_file or "\n" in self.ca_file):
            raise BackendsFileError(f"backend {name!r}: ca-file must be a non-empty path")

    def to_table(self) -> dict[str, Any]:
        """The backend's table in the file's kebab-case keys."""
        t: dict[str, Any] = {
            "endpoint": self.endpoint,
            "region": self.region,
            "access-key": self.access_key,
            "secret-key": self.secret_key,
            "path-style": self.path_style,
        }
        if self.ca_file is not None:
            t["ca-file"] = self.ca_file
        return t


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped."""
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise BackendsFileError(f"cannot write a value of type {type(v).__name__} into the backends file")


def dumps(backends: dict[str, dict[str, Any]]) -> str:
    """The backends file's text for `{name: {key: value}}` (tables sorted by name)."""
    parts = ["# bai-s3 backends file (mode 0600, root only). Written by bai_s3_client.\n"]
    for name in sorted(backends):
        parts.append(f"\n[backends.{_key(name)}]\n")
        for k, v in backends[name].items():
            parts.append(f"{_key(k)} = {_value(v)}\n")
    return "".join(parts)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message names a line and column, never the line's text (which may hold a
        # secret).
        raise BackendsFileError(
            f"backends file {path} is not valid TOML ({e}); it is left as it is"
        ) from None
    extra = sorted(set(doc) - {"backends"})
    if extra:
        raise BackendsFileError(
            f"backends file {path} has tables other than [backends.*] ({', '.join(extra)}); "
            "it is left as it is"
        )
    backends = doc.get("backends", {})
    if not isinstance(backends, dict) or not all(isinstance(t, dict) for t in backends.values()):
        raise BackendsFileError(f"backends file {path}: 'backends' must hold tables only")
    return backends


def _update(path: Path, change) -> None:
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        backends = _read(path)
        change(backends)
        text = dumps(backends)
        tmp = folder / f".{path.name}.tmp-{os.getpid()}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_backend(name: str, backend: Backend, path: str | os.PathLike = DEFAULT_PATH) -> None:
    """Adds backend `name` to the backends file, or replaces it; other backends stay as they are.

    The daemon picks the change up without a restart: new Mounts use the new settings, mounts
    already made keep theirs. Comments in the file are not kept (the file is rewritten).
    """
    backend.check(name)
    table = backend.to_table()

    def change(backends: dict[str, dict[str, Any]]) -> None:
        backends[name] = table

    _update(Path(path), change)


def remove_backend(name: str, path: str | os.PathLike = DEFAULT_PATH) -> bool:
    """Removes backend `name` from the file; returns whether it was there."""
    found = []

    def change(backends: dict[str, dict[str, Any]]) -> None:
        found.append(backends.pop(name, None) is not None)

    _update(Path(path), change)
    return found[0]
