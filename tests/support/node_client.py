"""The Node.js client (clients/node): where it is, and node with its packages, or a skip."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.processes import REPO

NODE_DIR = REPO / "clients" / "node"


def node_or_skip() -> str:
    """The node binary with the client's packages installed; skip (with the
    reason) when node or npm is missing, except under CI, where it fails."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    missing = [n for n, p in (("node", node), ("npm", npm)) if p is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed: the Node.js client is not tested"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: this must not skip)")
        pytest.skip(reason)
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return node
