"""Several masters on etcd with TLS on, as `./scripts/pool --ha` runs them:
a follower passes a client's call on to the leader over its own master
certificate, naming the client (delegation, security/auth.py), and the leader
applies that client's role; nobody but a master can speak for another; the
slaves stream to the leader and follow a new one after a failover."""

from __future__ import annotations

import contextlib
import signal

import grpc
import pytest

from tests.support import etcd as etcd_support
from tests.support.clients import stubs
from tests.support.ha import HaPool
from tests.support.processes import wait_until
from xcp_control.errors import error_info
from xcp_control.security import pki
from xcp.v1 import host_service_pb2 as hs, vm_service_pb2 as vs

pytestmark = pytest.mark.skipif(not etcd_support.available(), reason="etcd is not installed")

MiB = 1024 * 1024
FORGED = (("xcp-on-behalf-of", "pool-admin:mallory"),)


def reason(exc: grpc.RpcError) -> str:
    info = error_info(exc)
    return info.reason if info else exc.code().name


def create(s, name: str, metadata=None):
    return s.vms.CreateVM(vs.CreateVMRequest(name_label=name, memory=64 * MiB, vcpus=1),
                          timeout=10, metadata=metadata)


def refused(call) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return reason(err.value)


def as_master(ha: HaPool, address: str) -> grpc.Channel:
    """A channel with the masters' own certificate, as a follower's."""
    tls = ha.tls
    paths = tls.master()
    creds = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes(), paths.key.read_bytes(),
                                         paths.cert.read_bytes())
    return grpc.secure_channel(address, creds,
                               options=[("grpc.ssl_target_name_override", pki.MASTER_NAME)])


def test_with_tls_a_follower_passes_calls_on_for_its_client_and_slaves_follow(tmp_path):
    with HaPool(tmp_path, masters=2, slaves=1, etcd_fsync=False, tls=True) as ha:
        leader = ha.wait_leader()
        follower = ha.followers(leader)[0].address
        with contextlib.ExitStack() as stack:
            admin = stubs(stack.enter_context(ha.channel(follower, "admin")))
            viewer = stubs(stack.enter_context(ha.channel(follower, "viewer")))
            anon = stubs(stack.enter_context(ha.channel(follower, "client")))
            direct_viewer = stubs(stack.enter_context(ha.channel(leader, "viewer")))
            master = stubs(stack.enter_context(as_master(ha, leader)))

            # The slave streams to the leader over mutual TLS (ListHosts passed on).
            wait_until(lambda: any(m.live for m in admin.hosts.ListHosts(
                hs.ListHostsRequest(), timeout=5).host_metrics), 20, what="the host live")
            vm = create(admin, "passed-on")  # a write, passed on as the admin
            assert viewer.vms.GetVM(vs.GetVMRequest(uuid=vm.uuid), timeout=5).uuid == vm.uuid
            # The leader judges the client's role, not the follower's.
            assert refused(lambda: create(viewer, "no")) == "RBAC_PERMISSION_DENIED"
            assert refused(lambda: create(viewer, "no", FORGED)) == "RBAC_PERMISSION_DENIED"
            assert refused(lambda: create(direct_viewer, "no", FORGED)) == \
                "RBAC_PERMISSION_DENIED"
            assert refused(lambda: create(anon, "no")) == "SESSION_AUTHENTICATION_FAILED"
            # A master's own certificate acts for nobody unless it names a client.
            assert refused(lambda: create(master, "no")) == "RBAC_PERMISSION_DENIED"
            assert create(master, "delegated", FORGED).uuid

        # Failover: the survivor leads, and the slave streams to it.
        ha.by_address(leader).kill(signal.SIGKILL)
        new = ha.wait_leader(exclude=(leader,))
        assert new == follower
        wait_until(lambda: f"connected to master {new}" in ha.slaves[0].log(), 15,
                   what="the slave to stream to the new leader")
        with ha.channel(new, "admin") as ch:
            assert create(stubs(ch), "after").uuid
