"""`xcp top` against a real pool: under a pseudo-terminal it draws and
redraws the hosts (rich.live) and stops after --iterations; piped, it prints
one snapshot and exits."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time

from tests.support.clients import XCP_BIN
from tests.support.pool import RunningPool

METRICS = ["--metrics-listen", "127.0.0.1:0"]
TIMEOUT = 30.0


def run_in_pty(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run argv with a pseudo-terminal (140x40) as stdin, stdout and stderr;
    its exit status and everything it wrote."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower,
                            env=dict(env, TERM="xterm-256color"), start_new_session=True)
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(leader)


def test_top_under_a_terminal_and_piped(tmp_path):
    with RunningPool(tmp_path, slaves=2, master_args=METRICS) as pool:
        env = pool.env()
        url = pool.master.metrics_url
        code, screen = run_in_pty([str(XCP_BIN), "top", "--iterations", "2", "--interval", "0.5",
                                   "--metrics", url], env)
        assert code == 0, screen
        assert "host1" in screen and "host2" in screen, screen
        assert "\x1b[" in screen  # drawn as a terminal (styles, cursor moves)
        assert screen.count("xcp top - master") >= 2, screen  # redrawn
        assert "heartbeat streams" in screen, screen

        piped = subprocess.run([str(XCP_BIN), "top", "--metrics", url], env=env,
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert piped.returncode == 0, piped.stderr
        lines = piped.stdout.splitlines()
        assert lines[0].startswith("xcp top - master") and "2 hosts, 2 live" in lines[0]
        assert "\x1b" not in piped.stdout  # plain text for grep and awk
        rows = {line.split()[0]: line.split() for line in lines if line.startswith("host")}
        assert set(rows) == {"host1", "host2"} and all(r[2] == "true" for r in rows.values())
        assert any(line.startswith("forwarded calls:") for line in lines)
        assert piped.stdout.count("xcp top - master") == 1  # one snapshot
