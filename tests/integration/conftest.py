"""Fixtures of the integration tests: real masters on loopback. The logic lives in tests/support/."""

from __future__ import annotations

from typing import Callable, Iterator

import grpc
import pytest

from tests.support.clients import channel as open_channel
from tests.support.daemons import MasterProcess


@pytest.fixture
def master_factory(tmp_path) -> Iterator[Callable[..., MasterProcess]]:
    """start(db_path=None, **kwargs) -> a started MasterProcess on loopback port 0
    (db defaults to a fresh file in tmp_path); all are stopped at teardown."""
    started: list[MasterProcess] = []

    def start(db_path=None, **kwargs) -> MasterProcess:
        db = db_path or tmp_path / f"pool-{len(started)}.db"
        kwargs.setdefault("log_dir", tmp_path)
        proc = MasterProcess(db, **kwargs)
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def master(master_factory) -> MasterProcess:
    """A running xcp-master on a fresh database, on 127.0.0.1 with a free port."""
    return master_factory()


@pytest.fixture
def channel(master) -> Iterator[grpc.Channel]:
    """A connected channel to the `master` fixture."""
    with open_channel(master.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def module_master(tmp_path_factory) -> Iterator[MasterProcess]:
    """One master shared by a module's tests (for many cheap calls)."""
    tmp = tmp_path_factory.mktemp("master")
    with MasterProcess(tmp / "pool.db") as proc:
        yield proc
