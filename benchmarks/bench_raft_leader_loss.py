#!/usr/bin/env python3
"""One etcd member lost, its raft leader (issue 11: "a single etcd member lost in
a 3-member cluster changes nothing for clients"): what clients see.

    flock /work/heavy.lock .venv/bin/python benchmarks/bench_raft_leader_loss.py
    .venv/bin/python benchmarks/bench_raft_leader_loss.py --trials 1   # smoke run

Each trial is a fresh pool on loopback through the tests' harness
(tests/support/ha.py): a 3-member etcd (fsync on), two `xcp-master --etcd
--lease-ttl 2`, one slave. Clients (tests/support/ha.py ClientLoad: two CreateVM
loops and one GetVM loop on each master, leader and follower, 10 s deadlines,
never moving to another master) run; etcd's raft leader is SIGKILLed once 40
VMs are acknowledged; the trial ends once 200 more are. Victims: `via-other`,
the raft leader while the leader master's etcd channel uses another member
(requests there hang until etcd elects a new raft leader); `in-use`, the raft
leader that is also the member the channel uses (refused at once, the channel
moves on). The raft leader is placed with `etcdctl move-leader` before the load.

Per trial: calls that failed, the longest call (any client), whether the
masters kept their leader and epoch, every acknowledged VM listed afterwards,
and the leader master's suspension (its log: "stopped acting" to "leads the
pool" again). `--before COMMIT` runs that commit's masters (git archive; the
same harness and clients) for an A/B.

`--freeze`: the victim is frozen (SIGSTOP; its kernel still ACKs, so a
channel on it notices only at its keepalive PING timeout, ~2 s) instead of
killed, and resumed (SIGCONT) once the trial is over. Victim
`member-in-use` (either way): the member the channel uses while another
member leads raft.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import TREE_MASTER, archived_tree, load_note, machine_line, summarize  # noqa: E402,E501
from tests.support.clients import channel, stubs  # noqa: E402
from tests.support.daemons import MasterProcess  # noqa: E402
from tests.support.ha import ClientLoad, HaPool, get_pool  # noqa: E402
from tests.support.processes import wait_until  # noqa: E402
from xcp.v1 import vm_service_pb2 as vs  # noqa: E402

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class TreePool(HaPool):
    """An HaPool whose masters run the code of another checkout (`tree`)."""

    def __init__(self, *args, tree: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tree = tree

    def new_master(self, i: int) -> MasterProcess:
        launcher = [sys.executable, "-c", TREE_MASTER, self._tree] if self._tree else ()
        return MasterProcess(self.root / f"unused-{i}.db", extra_args=self.master_argv(),
                             log_dir=self.root, launcher=launcher)


def _stamp(line: str) -> float | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def suspension(log: str, after: float) -> float:
    """Seconds the master did not act after `after` (wall clock): from each
    "stopped acting" to the next "leads the pool", summed; 0 if none."""
    total, stopped = 0.0, None
    for line in log.splitlines():
        at = _stamp(line)
        if at is None or at < after:
            continue
        if "stopped acting as leader" in line and stopped is None:
            stopped = at
        elif "leads the pool" in line and stopped is not None:
            total += at - stopped
            stopped = None
    return total


def trial(root: Path, victim: str, tree: str, freeze: bool = False) -> dict:
    with TreePool(root, masters=2, slaves=1, etcd_members=3, tree=tree) as ha:
        leader = ha.wait_leader()
        follower = ha.followers(leader)[0].address
        master = ha.by_address(leader)
        used = wait_until(lambda: ha.etcd.member_used_by(master.proc.pid), 10,
                          what="the leader's etcd connection")
        other = next(m for m in ha.etcd.members if m is not used)
        target = other if victim == "via-other" else used
        ha.etcd.move_raft_leader(other if victim == "member-in-use" else target)
        wait_until(lambda: (p := get_pool(leader)) is not None and p.master == leader, 10,
                   what="the leader to act after the raft move")
        epoch = get_pool(leader).epoch
        with ClientLoad([leader, follower], creators=2, readers=1, timeout=10.0) as load:
            wait_until(lambda: len(load.acked) >= 40, 20, what="the burst to get going")
            before = len(load.acked)
            killed_at = time.time()
            if freeze:
                target.signal(signal.SIGSTOP)
            else:
                target.kill()
            try:
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: len(load.acked) >= before + 200, 30, what="writes")
            finally:
                if freeze:
                    target.signal(signal.SIGCONT)
        after = get_pool(leader)
        kept = after is not None and (after.master, after.epoch) == (leader, epoch)
        listed = set()
        with channel(follower) as ch:
            listed = {v.uuid for v in stubs(ch).vms.ListVMs(vs.ListVMsRequest(),
                                                            timeout=10).vms}
        return {"victim": victim, "failed": len(load.failures), "calls": load.answered,
                "failures": load.failures[:5], "longest": load.longest,
                "kept_leader": kept, "missing": len(set(load.acked) - listed),
                "suspended": suspension(master.stderr_text(), killed_at)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--victims", default="via-other,in-use",
                        help="via-other, in-use (the raft leader), member-in-use (not it)")
    parser.add_argument("--before", default="", help="also run this commit's masters")
    parser.add_argument("--freeze", action="store_true",
                        help="SIGSTOP the victim (SIGCONT after the trial) instead of SIGKILL")
    args = parser.parse_args()
    print(machine_line())
    print(f"start {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {load_note()}, "
          f"victims {'frozen (SIGSTOP)' if args.freeze else 'killed (SIGKILL)'}")
    runs = [("after", "")]
    scratch = Path(tempfile.mkdtemp(prefix="bench-raft-"))
    if args.before:
        runs.append((f"before ({args.before})", archived_tree(args.before, scratch / "tree")))
    for label, tree in runs:
        for victim in args.victims.split(","):
            rows = []
            for i in range(args.trials):
                result = trial(scratch / f"{label[:6]}-{victim}-{i}", victim, tree, args.freeze)
                rows.append(result)
                print(f"  {label} {victim} #{i + 1}: {result['failed']} failed of "
                      f"{result['calls']}, longest {result['longest']:.2f}s, suspended "
                      f"{result['suspended']:.2f}s, leader kept {result['kept_leader']}, "
                      f"missing {result['missing']} {result['failures'][:2]}", flush=True)
            longest = summarize(r["longest"] for r in rows)
            suspended = summarize(r["suspended"] for r in rows)
            failed = summarize(r["failed"] for r in rows)
            print(f"{label} {victim}: failed calls per trial {failed.median:g} "
                  f"({failed.low:g}-{failed.high:g}), trials with none "
                  f"{sum(r['failed'] == 0 for r in rows)}/{len(rows)}; longest call "
                  f"{longest.median:.2f}s ({longest.low:.2f}-{longest.high:.2f}); leader "
                  f"suspended {suspended.median:.2f}s ({suspended.low:.2f}-"
                  f"{suspended.high:.2f}); leader kept {sum(r['kept_leader'] for r in rows)}"
                  f"/{len(rows)}; VMs missing {sum(r['missing'] for r in rows)}; n={len(rows)}",
                  flush=True)
    print(f"end {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
