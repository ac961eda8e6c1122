"""Where a pool lives in etcd: every key under one prefix P.

P/o/<class>/<uuid>  the pool objects (serialized datamodel messages)
P/meta/db_id        the pool's id, made once by the first master
P/leader            the leader's API address, on its lease; its create
                    revision is the leader's epoch
P/masters/<address> one per running master, on its lease
"""

from __future__ import annotations

from dataclasses import dataclass

from xcp_control.master.store import CLASSES


@dataclass(frozen=True)
class Keys:
    """Where a pool lives in etcd."""

    prefix: bytes

    @classmethod
    def of(cls, prefix: str) -> "Keys":
        return cls(prefix.rstrip("/").encode())

    @property
    def root(self) -> bytes:
        return self.prefix + b"/"

    @property
    def leader(self) -> bytes:
        return self.prefix + b"/leader"

    @property
    def masters(self) -> bytes:
        return self.prefix + b"/masters/"

    @property
    def db_id(self) -> bytes:
        return self.prefix + b"/meta/db_id"

    @property
    def objects(self) -> bytes:
        return self.prefix + b"/o/"

    def object(self, class_name: str, uuid: str) -> bytes:
        return b"%s/o/%s/%s" % (self.prefix, class_name.encode(), uuid.encode())

    def parse_object(self, key: bytes) -> tuple[str, str] | None:
        if not key.startswith(self.objects):
            return None
        class_name, _, uuid = key[len(self.objects):].decode().partition("/")
        return (class_name, uuid) if class_name in CLASSES and uuid else None
