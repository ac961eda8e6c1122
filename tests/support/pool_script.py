"""`./scripts/pool` as a process in its own session, its banner parsed.

The session id is the script's pid, so everything it starts can be found, and
killed, by session (`session_pids`, `kill_session`) even when the script itself is
gone. Its stdout and stderr are read as one stream, in order (`text()`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from tests.support.clients import client_env, xcp
from tests.support.processes import REPO, Proc, forget, kill_session

POOL_SCRIPT = REPO / "scripts" / "pool"
BANNER_END = "Ctrl-C stops the pool."
BANNER_HOST = re.compile(r"^\s+(?P<name>host\d+)\s+(?P<addr>127\.0\.0\.1:\d+)\s+pid (?P<pid>\d+)"
                         r"\s+uuid (?P<uuid>[0-9a-f-]{36})$")
BANNER_MASTER = re.compile(r"^\s+master\s+(?P<addr>127\.0\.0\.1:\d+)\s+pid (?P<pid>\d+)")
BANNER_TOKENS = re.compile(r"^\s+tokens\s+(?P<addr>127\.0\.0\.1:\d+)\s")


class PoolScript(Proc):
    """`./scripts/pool`: secure (its default) unless `extra` holds --insecure."""

    def __init__(self, state_dir: Path, port: int = 0, slaves: int = 3,
                 extra: Sequence[str] = ()) -> None:
        self.state_dir = Path(state_dir)
        self.secure = "--insecure" not in extra
        # The token endpoint on any free port: port + 1, the script's default,
        # may be taken on a busy machine.
        tokens = ["--token-port", "0"] if self.secure and "--token-port" not in extra else []
        argv = [str(POOL_SCRIPT), "--port", str(port), "--slaves", str(slaves),
                "--state-dir", str(self.state_dir), *tokens, *extra]
        super().__init__(argv, "scripts-pool", log_dir=self.state_dir.parent, cwd=REPO,
                         merge_stderr=True)
        self.address = ""
        self.token_address = ""  # the master's token endpoint (secure pools)
        self.master_pid = 0
        self.hosts: dict[str, dict[str, str]] = {}  # name -> uuid, addr, pid

    def start(self, timeout: float = 300.0) -> "PoolScript":
        """Start and read its output until the banner is complete (the first
        run may install the venv: hence the generous bound)."""
        self.spawn()
        try:
            self._read_banner(timeout)
        except BaseException:
            self.kill_all()
            raise
        return self

    def _read_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("scripts/pool ended before it was up:\n" + self.text())
            if (m := BANNER_MASTER.match(line)):
                self.address, self.master_pid = m["addr"], int(m["pid"])
            elif (m := BANNER_TOKENS.match(line)):
                self.token_address = m["addr"]
            elif (m := BANNER_HOST.match(line)):
                self.hosts[m["name"]] = {"uuid": m["uuid"], "addr": m["addr"], "pid": m["pid"]}
            elif line.strip() == BANNER_END:
                return

    @property
    def tls_dir(self) -> Path | None:
        """Where the script keeps the pool's certificates (None: --insecure)."""
        return self.state_dir / "tls" if self.secure else None

    def env(self, identity: str | None = None, token: str | None = None) -> dict[str, str]:
        """The environment of a client of this pool, as the banner says."""
        return client_env(self.address, self.tls_dir, identity, token)

    def xcp(self, *args: str, timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
        return xcp(*args, timeout=timeout, env=self.env(), **kwargs)

    def readline(self, timeout: float) -> str | None:
        """The next line of output, None at EOF; AssertionError after `timeout`."""
        try:
            return self.next_line(timeout)
        except AssertionError:
            raise AssertionError(f"scripts/pool said nothing for {timeout:.0f}s:\n"
                                 f"{self.text()}") from None

    def text(self) -> str:
        return self.stdout_text()

    def rest(self, timeout: float = 10.0) -> str:
        """Read what it prints until it exits (bounded)."""
        deadline = time.monotonic() + timeout
        while self.readline(max(0.0, deadline - time.monotonic())) is not None:
            pass
        return self.text()

    @property
    def sid(self) -> int:
        return self.pid  # start_new_session: the script leads its session

    def stop(self, sig: int = signal.SIGTERM, group: bool = False,
             timeout: float = 30.0) -> int:
        """Send `sig` to the script (or its whole process group, as a terminal's
        Ctrl-C does) and wait for it to exit; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        code = self.wait_exit(timeout)
        self.rest(timeout=5)
        return code

    def kill_all(self) -> None:
        """Last resort: SIGKILL everything in the script's session."""
        if self.proc is None:
            return
        kill_session(self.sid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        forget(self.proc)

    def __enter__(self) -> "PoolScript":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.stop(timeout=20)
        finally:
            self.kill_all()
