"""gRPC plumbing shared by master, slave and CLI: options, credentials,
channels, server helpers."""
