"""`xcp`'s commands: one function per sub-command, each a call of the master
(through cli/client.py's Connection) and its rendering (cli/render.py)."""

from __future__ import annotations

import argparse
import signal
from dataclasses import dataclass
from typing import Callable

import grpc

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import pool_service_pb2 as ps
from xcp.v1 import vm_service_pb2 as vs
from xcp_control.cli import render
from xcp_control.cli.client import USAGE, CliError, Connection

LIST_PAGE = 5_000  # VMs per ListVMs call (about 0.5 MB)


@dataclass
class Context:
    conn: Connection | None  # None for the offline (certificate) commands
    out: render.Output
    args: argparse.Namespace


def cmd_host_list(c: Context) -> None:
    response = c.conn.call(c.conn.hosts.ListHosts, hs.ListHostsRequest())
    if c.out.json_mode:
        c.out.json(response)
    else:
        c.out.table(render.host_table(response))


def cmd_host_get(c: Context) -> None:
    host = c.conn.call(c.conn.hosts.GetHost, hs.GetHostRequest(uuid=c.conn.host_uuid(c.args.host)))
    c.out.json(host) if c.out.json_mode else c.out.record(host)


def cmd_host_metrics(c: Context) -> None:
    uuid = c.conn.host_uuid(c.args.host)
    metrics = c.conn.call(c.conn.hosts.GetHostMetrics, hs.GetHostMetricsRequest(uuid=uuid))
    c.out.json(metrics) if c.out.json_mode else c.out.record(metrics)


def _host_op(method: str, request_type, progress: str, done: str) -> Callable[[Context], None]:
    def run(c: Context) -> None:
        uuid = c.conn.host_uuid(c.args.host)
        host = c.conn.call(getattr(c.conn.hosts, method), request_type(uuid=uuid),
                           progress=f"{progress} {c.args.host}")
        c.out.json(host) if c.out.json_mode else c.out.write(render.host_summary(host, done))
    return run


cmd_host_disable = _host_op("DisableHost", hs.DisableHostRequest, "disabling", "disabled")
cmd_host_enable = _host_op("EnableHost", hs.EnableHostRequest, "enabling", "enabled")
cmd_host_declare_dead = _host_op("DeclareDead", hs.DeclareDeadRequest, "declaring dead",
                                 "declared dead: not live, its VMs HALTED")


def cmd_host_forget(c: Context) -> None:
    uuid = c.conn.host_uuid(c.args.host)
    response = c.conn.call(c.conn.hosts.ForgetHost, hs.ForgetHostRequest(uuid=uuid))
    if c.out.json_mode:
        c.out.json(response)


def cmd_vm_create(c: Context) -> None:
    a = c.args
    affinity = c.conn.host_uuid(a.affinity) if a.affinity else ""
    vm = c.conn.call(c.conn.vms.CreateVM, vs.CreateVMRequest(
        name_label=a.name_label, memory=a.memory, vcpus=a.vcpus, affinity=affinity,
        other_config=dict(a.other_config or []), pv_kernel=a.pv_kernel,
        pv_ramdisk=a.pv_ramdisk, pv_args=a.pv_args))
    # Like `xe vm-install`: the new uuid alone, for VM=$(xcp vm-create ...).
    c.out.json(vm) if c.out.json_mode else c.out.write(vm.uuid)


def cmd_vm_get(c: Context) -> None:
    vm = c.conn.call(c.conn.vms.GetVM, vs.GetVMRequest(uuid=c.conn.vm_uuid(c.args.vm)))
    c.out.json(vm) if c.out.json_mode else c.out.record(vm)


def cmd_vm_list(c: Context) -> None:
    host = c.conn.host_uuid(c.args.host) if c.args.host else ""
    response = vs.ListVMsResponse()
    request = vs.ListVMsRequest(host=host, page_size=LIST_PAGE,
                                power_state=c.args.power_state or dm.POWER_STATE_UNSPECIFIED)
    while True:  # page by page: a large pool's list exceeds one message
        page = c.conn.call(c.conn.vms.ListVMs, request)
        response.vms.extend(page.vms)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if c.out.json_mode:
        c.out.json(response)
    else:
        names = c.conn.host_names() if any(v.resident_on for v in response.vms) else {}
        c.out.table(render.vm_table(response.vms, names))


def cmd_vm_destroy(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    response = c.conn.call(c.conn.vms.DestroyVM, vs.DestroyVMRequest(uuid=uuid))
    if c.out.json_mode:
        c.out.json(response)


def _vm_result(c: Context, vm: dm.VM) -> None:
    if c.out.json_mode:
        c.out.json(vm)
        return
    name = c.conn.host_names().get(vm.resident_on, "") if vm.resident_on else ""
    c.out.write(render.vm_summary(vm, name))


def cmd_vm_start(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    host = c.conn.host_uuid(c.args.host) if c.args.host else ""
    where = f" on {c.args.host}" if c.args.host else ""
    vm = c.conn.call(c.conn.vms.StartVM, vs.StartVMRequest(uuid=uuid, host=host,
                                                           paused=c.args.paused),
                     progress=f"starting {c.args.vm}{where}")
    _vm_result(c, vm)


def cmd_vm_shutdown(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    how = "hard" if c.args.force else "clean"
    vm = c.conn.call(c.conn.vms.ShutdownVM, vs.ShutdownVMRequest(uuid=uuid, force=c.args.force),
                     progress=f"shutting {c.args.vm} down ({how})")
    _vm_result(c, vm)


def cmd_vm_reboot(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    how = "hard" if c.args.force else "clean"
    vm = c.conn.call(c.conn.vms.RebootVM, vs.RebootVMRequest(uuid=uuid, force=c.args.force),
                     progress=f"rebooting {c.args.vm} ({how})")
    _vm_result(c, vm)


def cmd_vm_pause(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    vm = c.conn.call(c.conn.vms.PauseVM, vs.PauseVMRequest(uuid=uuid),
                     progress=f"pausing {c.args.vm}")
    _vm_result(c, vm)


def cmd_vm_unpause(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    vm = c.conn.call(c.conn.vms.UnpauseVM, vs.UnpauseVMRequest(uuid=uuid),
                     progress=f"unpausing {c.args.vm}")
    _vm_result(c, vm)


def cmd_watch(c: Context) -> None:
    """Stream events, one line each, until Ctrl-C, SIGTERM, --count or --timeout."""
    classes = [name for group in (c.args.classes or []) for name in group]
    request = ev.WatchRequest(classes=list(dict.fromkeys(classes)), token=c.args.token or "")
    names: dict[str, str] = {}
    if not c.out.json_mode and (not classes or "host_metrics" in classes or "vm" in classes):
        names = c.conn.host_names()
    # No deadline unless --timeout was given: then it is how long to watch.
    deadline = c.args.timeout
    call = c.conn.events.Watch(request, timeout=deadline, metadata=c.conn.metadata)
    stopped = []

    def stop(signum, frame) -> None:
        # Cancel the call rather than raise mid-read: an exception thrown into
        # grpc's waiting thread machinery can leave its locks inconsistent.
        stopped.append(signum)
        call.cancel()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    shown = 0
    try:
        for event in call:
            if event.WhichOneof("object") == "host":
                names[event.uuid] = event.host.name_label
            if c.out.json_mode:
                c.out.json(event, indent=None)
            else:
                c.out.write(render.event_line(event, names))
            shown += 1
            if c.args.count and shown >= c.args.count:
                break
    except grpc.RpcError as exc:
        finished = deadline and c.conn.connected and \
            exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        if not (stopped or finished):
            raise c.conn.error(exc, deadline) from None
    finally:
        call.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)




# -- the pool and its HA settings -------------------------------------------------


def _show(c: Context, message) -> None:
    c.out.json(message) if c.out.json_mode else c.out.record(message)


def cmd_pool_get(c: Context) -> None:
    _show(c, c.conn.call(c.conn.pools.GetPool, ps.GetPoolRequest()))


def cmd_pool_ha_enable(c: Context) -> None:
    _show(c, c.conn.call(c.conn.pools.SetHaConfig, ps.SetHaConfigRequest(
        enabled=True, host_failures_to_tolerate=c.args.failures)))


def cmd_pool_ha_disable(c: Context) -> None:
    # Like xe pool-ha-disable: the failures to tolerate stay for the next enable.
    pool = c.conn.call(c.conn.pools.GetPool, ps.GetPoolRequest())
    _show(c, c.conn.call(c.conn.pools.SetHaConfig, ps.SetHaConfigRequest(
        enabled=False, host_failures_to_tolerate=pool.ha_host_failures_to_tolerate)))


def cmd_vm_set(c: Context) -> None:
    a = c.args
    vm, mask = dm.VM(uuid=c.conn.vm_uuid(a.vm)), []
    if a.ha_restart_priority is not None:
        vm.ha_restart_priority = a.ha_restart_priority
        mask.append("ha_restart_priority")
    if a.ha_restart_order is not None:
        vm.ha_restart_order = a.ha_restart_order
        mask.append("ha_restart_order")
    if not mask:
        raise CliError(USAGE, "error: nothing to set: give --ha-restart-priority "
                              "and/or --ha-restart-order")
    request = vs.UpdateVMRequest(vm=vm)
    request.update_mask.paths.extend(mask)
    _show(c, c.conn.call(c.conn.vms.UpdateVM, request))
