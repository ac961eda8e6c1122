"""Generated gRPC code for the xcp.v1 protos (scripts/gen-protos)."""
