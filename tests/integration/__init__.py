"""Tests that run xcp processes on loopback."""
