"""The README's walk-through works as written.

Every command in the README's ```sh blocks is either in scripts/walkthrough.sh
(the same commands, in the same order) or one of the two top-level commands
tested elsewhere (./scripts/pool by test_scripts_pool.py, ./scripts/test by
CI, which runs it). Then the walk-through runs against a pool started with
./scripts/pool (secure, its default), on a free port with its own state dir:
the only changes to the script are the master's addresses (for 127.0.0.1:7000 and,
the token endpoint, 127.0.0.1:7001) and that state dir (for $PWD/.xcp/ and .xcp/),
and it runs with none of the caller's XCP_* settings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.support.clients import client_env
from tests.support.node_client import node_or_skip
from tests.support.pool_script import PoolScript
from tests.support.processes import REPO

README = REPO / "README.md"
WALKTHROUGH = REPO / "scripts" / "walkthrough.sh"
MARKER = "# --- the README's commands"
TESTED_ELSEWHERE = {"./scripts/pool": "tests/integration/test_scripts_pool.py",
                    "./scripts/test": "CI (.ci/run runs it)"}


def _commands(lines: list[str]) -> list[str]:
    """Command lines: blank lines and full-line comments dropped, backslash
    continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in lines:
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        out.append(pending + line)
        pending = ""
    assert not pending, f"dangling continuation: {pending!r}"
    return out


def readme_commands() -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks, "the README has no ```sh blocks"
    return _commands([line for block in blocks for line in block.splitlines()])


def walkthrough_commands() -> list[str]:
    text = WALKTHROUGH.read_text()
    assert MARKER in text
    return _commands(text.split(MARKER, 1)[1].splitlines()[1:])


def test_readme_and_walkthrough_have_the_same_commands():
    in_readme = [c for c in readme_commands() if c not in TESTED_ELSEWHERE]
    assert in_readme == walkthrough_commands()


def test_readme_shows_the_two_commands():
    assert set(TESTED_ELSEWHERE) <= set(readme_commands())


def test_readme_documents_the_exit_codes_of_the_cli():
    from xcp_control.cli.client import EXIT_CODES
    text = README.read_text()
    for code, _ in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", text, re.M), f"exit code {code} not in the README"


def test_readme_module_map_names_every_module():
    text = README.read_text()
    modules = sorted(p.name for p in (REPO / "xcp_control").glob("*.py")
                     if p.name != "__init__.py")
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"modules missing from the README's module map: {missing}"


def _node_available() -> bool:
    if shutil.which("node") and shutil.which("npm"):
        node_or_skip()  # installs the packages if needed
        return True
    if os.environ.get("CI"):
        pytest.fail("node/npm missing under CI: the README's Node.js commands must run")
    return False


def test_walkthrough_runs_against_a_pool(tmp_path):
    node = _node_available()
    state = tmp_path / ".xcp"
    with PoolScript(state, port=0, slaves=3) as pool:
        script = WALKTHROUGH.read_text()
        script = script.replace("127.0.0.1:7000", pool.address)
        script = script.replace("127.0.0.1:7001", pool.token_address)
        script = re.sub(r"(\$PWD/)?\.xcp/", lambda _: f"{state}/", script)  # one pass
        if not node:  # outside CI only: run the rest, say what was skipped
            script = re.sub(r"^node .*$", ": node missing: skipped", script, flags=re.M)
        path = tmp_path / "walkthrough.sh"
        path.write_text(script)
        env = client_env(master=pool.address)
        result = subprocess.run(["bash", str(path)], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                timeout=240, stdin=subprocess.DEVNULL)
        out = result.stdout  # with stderr, interleaved as on a terminal
        assert result.returncode == 0, out
        assert "Traceback" not in out

        host1 = pool.hosts["host1"]["uuid"]
        # The pool is secure: its certificates are where the README says.
        assert (state / "tls" / "ca.pem").exists()
        # host-list: three live hosts at first.
        assert len(re.findall(r"^[0-9a-f-]{36}  host\d  127\.0\.0\.1:\d+\s+true\s+true\s+",
                              out, re.M)) >= 3
        # grpcurl: list, describe, call.
        assert "xcp.v1.VMService" in out and "message StartVMRequest" in out
        assert '"name_label": "db1"' in out
        # The exit codes in xcp --help.
        assert "3  the target host is unreachable" in out
        # The kill: the watch saw host1 go down, calls fail with HOST_OFFLINE, exit 3.
        assert re.search(r" MOD  host_metrics \S+ host=host1 live=false ", out), out
        offline = f"error: HOST_OFFLINE host={host1}\nexit code 3"
        assert out.count(offline) == (2 if node else 1), out
        assert re.search(rf"^{host1}\s+host1\s+\S+\s+true\s+false\s+", out, re.M)
        # Recovery: declared dead, web1 restarted on another host, host1 forgotten.
        assert f"{host1} (host1) declared dead" in out
        assert re.search(r"\(web1\) RUNNING on host[23]$", out, re.M)
        assert "error: VM_BAD_POWER_STATE" in out and "exit code 1" in out
        assert "error: cannot reach the master at 127.0.0.1:1: connection refused\n" \
               "exit code 4" in out
        # xcp top, piped: one snapshot of the two hosts left, with the master's metrics.
        assert re.search(r"^xcp top - master \S+ - 2 hosts, 2 live; 2 VMs, 1 running - ", out,
                         re.M), out
        assert re.search(r"^  errors: HOST_OFFLINE [1-9]", out, re.M), out
        # Security: a read-only token lists (db1 HALTED, web1 RUNNING) but may not
        # start a VM; a client certificate alone is refused; plaintext never connects.
        tail = out.split("exit code 4", 1)[1]
        assert re.search(r"^[0-9a-f-]{36}\s+db1\s+HALTED\s", tail, re.M), tail
        assert re.search(r"^[0-9a-f-]{36}\s+web1\s+RUNNING\s+host[23]\s", tail, re.M), tail
        assert "error: RBAC_PERMISSION_DENIED role=read-only " \
               "operation=/xcp.v1.VMService/StartVM\nexit code 1\n" in tail
        assert "error: SESSION_AUTHENTICATION_FAILED detail='no credentials" in tail
        assert re.search(rf"^error: cannot reach the master at {pool.address}: .*\n"
                         rf"exit code 4$", tail, re.M), tail
        # The token endpoint: the token and the CA alone list (a read-only token, db1
        # HALTED); health needs nothing; without a token, nothing else.
        plain = re.search(rf"^error: cannot reach the master at {pool.address}: .*\n"
                          rf"exit code 4$", tail, re.M)
        tokens = tail[plain.end():]
        assert re.search(r"^[0-9a-f-]{36}\s+db1\s+HALTED\s", tokens, re.M), tokens
        assert '"name_label": "db1"' in tokens and '"name_label": "web1"' not in tokens
        assert '"status": "SERVING"' in tokens, tokens
        assert "error: SESSION_AUTHENTICATION_FAILED detail='no credentials" in tokens
        assert out.count("xcp_") == 0  # the token is never printed
    assert pool.proc.returncode == 0, pool.text()
