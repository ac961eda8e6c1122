"""Generated from protos/xcp/v1 by scripts/gen-protos: do not edit."""
