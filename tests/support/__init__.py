"""Helpers shared by the test suites (test hosts in network namespaces, ...)."""
