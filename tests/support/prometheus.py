"""A real Prometheus server for tests: Debian's `prometheus` binary, started
on a free loopback port with a temporary config and data dir, scraping the
given targets every second; stopped (SIGTERM, then SIGKILL) and its
directory removed at exit, even when the test fails.

`query(expr)` asks its HTTP API (/api/v1/query) and returns {labels: value};
`wait_for(expr, predicate)` polls it, bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pytest

from tests.support.processes import free_port

SCRAPE_INTERVAL = "1s"
START_TIMEOUT = 30.0


def prometheus_or_skip() -> str:
    """The prometheus binary; skip (with the reason) when it is missing,
    except under CI, where it fails (./scripts/test installs it)."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                           if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if found is None:
        reason = ("prometheus not installed (Debian package `prometheus`; "
                  "./scripts/test installs it)")
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: this must not skip)")
        pytest.skip(reason)
    return found


def _config(jobs: Mapping[str, Sequence[str]]) -> str:
    """prometheus.yml for `jobs` (job name -> HOST:PORT targets), in JSON
    (YAML's subset), scraping every second."""
    return json.dumps({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
                           for job, targets in jobs.items()],
    }, indent=2)


class PrometheusServer:
    """`with PrometheusServer(binary, {"xcp-master": ["127.0.0.1:9100"]}) as prom:`."""

    def __init__(self, binary: str, jobs: Mapping[str, Sequence[str]]) -> None:
        self.binary = binary
        self.jobs = {job: list(targets) for job, targets in jobs.items()}
        self.root = Path(tempfile.mkdtemp(prefix="xcp-prometheus-"))
        self.address = ""
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrometheusServer":
        (self.root / "prometheus.yml").write_text(_config(self.jobs))
        self.address = f"127.0.0.1:{free_port()}"
        log = open(self.root / "prometheus.log", "wb")
        with log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address={self.address}", "--storage.tsdb.retention.time=1h"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        path = self.root / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: {sorted label pairs (without __name__): value}."""
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            doc = json.load(response)
        assert doc["status"] == "success", doc
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")):
                float(r["value"][1]) for r in doc["data"]["result"]}

    def value(self, expr: str) -> float | None:
        """The value of a query that selects one series (None when it selects none)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} selects {len(result)} series: {result}"
        return next(iter(result.values()), None)

    def wait_for(self, expr: str, predicate: Callable[[float | None], bool],
                 timeout: float = 30.0) -> float | None:
        """Poll `expr` (one series) until predicate(value); its value then."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if predicate(last):
                return last
            time.sleep(0.25)
        raise AssertionError(f"{expr} never satisfied the test within {timeout}s "
                             f"(last {last}); targets: {self.query('up')}\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "xcp-pool.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard in the repository."""
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
