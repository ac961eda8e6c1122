"""The host's identity: a uuid kept in the state dir, created on first start."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

HOST_UUID_FILE = "host-uuid"


class IdentityError(Exception):
    """The state dir holds something that is not a host uuid; says what to do."""


def load_or_create_host_uuid(state_dir: Path) -> str:
    """The host uuid kept in state_dir/host-uuid, created on first start.
    Written atomically (tmp, fsync, rename, fsync dir): a crash mid-write must
    never leave a host without its identity or with half of one."""
    path = state_dir / HOST_UUID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return _create_host_uuid(state_dir, path)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise IdentityError(f"{path} does not hold a uuid ({text[:40]!r}); "
                           "remove it to give this host a new identity") from None


def _create_host_uuid(state_dir: Path, path: Path) -> str:
    state_dir.mkdir(parents=True, exist_ok=True)
    host_uuid = str(uuid.uuid4())
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{HOST_UUID_FILE}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(host_uuid + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return host_uuid
