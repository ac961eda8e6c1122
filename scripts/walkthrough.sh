#!/usr/bin/env bash
# The README's walk-through, command for command, in the README's order.
#
# tests/integration/test_readme.py checks that the commands in the README's
# ```sh blocks and the commands below are the same, then runs this script
# against a pool started with ./scripts/pool (its own port and state dir:
# the test rewrites 127.0.0.1:7000, the token endpoint 127.0.0.1:7001,
# $PWD/.xcp/ and .xcp/ to them).
#
# By hand: ./scripts/pool in one terminal (secure: mutual TLS with the
# certificates it keeps in .xcp/tls); in another, from the repository root,
# ./scripts/walkthrough.sh. It kills and forgets host1 on the way (stop the
# pool and start it again to get host1 back), and issues a read-only token.
set -euo pipefail
if [ ! -x scripts/pool ]; then
  echo "walkthrough: run me from the repository root" >&2
  exit 2
fi
# --- the README's commands ---------------------------------------------------
export PATH=$PWD/.venv/bin:$PATH
export XCP_TLS_DIR=$PWD/.xcp/tls
xcp host-list
grpcurl -cacert .xcp/tls/ca.pem -cert .xcp/tls/client-admin.pem -key .xcp/tls/client-admin-key.pem 127.0.0.1:7000 list
grpcurl -cacert .xcp/tls/ca.pem -cert .xcp/tls/client-admin.pem -key .xcp/tls/client-admin-key.pem 127.0.0.1:7000 describe xcp.v1.VMService
grpcurl -cacert .xcp/tls/ca.pem -cert .xcp/tls/client-admin.pem -key .xcp/tls/client-admin-key.pem 127.0.0.1:7000 describe xcp.v1.StartVMRequest
grpcurl -cacert .xcp/tls/ca.pem -cert .xcp/tls/client-admin.pem -key .xcp/tls/client-admin-key.pem -d '{}' 127.0.0.1:7000 xcp.v1.HostService/ListHosts
grpcurl -cacert .xcp/tls/ca.pem -cert .xcp/tls/client-admin.pem -key .xcp/tls/client-admin-key.pem -d '{"name_label": "db1", "memory": 1073741824, "vcpus": 1}' 127.0.0.1:7000 xcp.v1.VMService/CreateVM
xcp --help
xcp vm-create web1 --memory 2G --vcpus 2
xcp vm-start web1 --host host1
xcp vm-start db1 --host host1
xcp vm-list
xcp vm-get web1 --json
xcp vm-pause web1
xcp vm-unpause web1
xcp vm-reboot web1
xcp vm-list --power-state running --json
xcp host-metrics host1
xcp watch --class host_metrics &
sleep 1; kill -9 $(cat .xcp/run/host1.pid)
sleep 2; kill %1
xcp host-list
xcp vm-shutdown web1 || echo "exit code $?"
node clients/node/xcp-client.js list-hosts
node clients/node/xcp-client.js shutdown-vm db1 || echo "exit code $?"
xcp host-declare-dead host1
xcp vm-start web1
xcp vm-list
xcp host-forget host1
xcp vm-destroy web1 || echo "exit code $?"
xcp --master 127.0.0.1:1 host-list || echo "exit code $?"
export XCP_METRICS=$(sed -n 's/^xcp-master: metrics on //p' .xcp/logs/master.log)
xcp top
TOKEN=$(xcp token-issue --name alice --role read-only --ttl 3600)
xcp --identity client --auth-token "$TOKEN" vm-list
xcp --identity client --auth-token "$TOKEN" vm-start db1 || echo "exit code $?"
xcp --identity client vm-list || echo "exit code $?"
XCP_TLS_DIR= xcp host-list || echo "exit code $?"
xcp --master 127.0.0.1:7001 --ca-cert .xcp/tls/ca.pem --auth-token "$TOKEN" vm-list
grpcurl -cacert .xcp/tls/ca.pem -H "authorization: Bearer $TOKEN" -d '{"power_state": "HALTED"}' 127.0.0.1:7001 xcp.v1.VMService/ListVMs
grpcurl -cacert .xcp/tls/ca.pem 127.0.0.1:7001 grpc.health.v1.Health/Check
xcp --master 127.0.0.1:7001 --ca-cert .xcp/tls/ca.pem vm-list || echo "exit code $?"
