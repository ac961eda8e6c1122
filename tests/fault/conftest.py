"""Fixtures of the fault tests: a master with slaves on loopback (`lab`), or with
one slave's host in a network namespace that can be partitioned (`netns_lab`).
One of each per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.lab import Case, Lab
from tests.support.netns import TestHost, require_test_hosts


def _module_name(request) -> str:
    return request.module.__name__.rsplit(".", 1)[-1]


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp(_module_name(request)))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def netns_lab(request, tmp_path_factory) -> Iterator[Lab]:
    require_test_hosts()
    with TestHost() as host:
        lab = Lab(tmp_path_factory.mktemp(f"{_module_name(request)}-netns"), host)
        try:
            yield lab
        finally:
            lab.close()


@pytest.fixture
def case(lab: Lab) -> Iterator[Case]:
    with lab.case() as c:
        yield c


@pytest.fixture
def ns_case(netns_lab: Lab) -> Iterator[Case]:
    with netns_lab.case() as c:
        yield c
