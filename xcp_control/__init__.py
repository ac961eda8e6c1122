"""xcp-control: a pool control plane for hypervisor hosts, on gRPC."""
