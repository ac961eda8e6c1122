"""Prometheus metrics, shared by the master and the slave: the /metrics
endpoint and reading state on the event loop that owns it (endpoint.py).
What each process exposes lives beside it: master/prometheus.py and
slave/prometheus.py; per-call gRPC metrics in rpc/call_metrics.py."""
