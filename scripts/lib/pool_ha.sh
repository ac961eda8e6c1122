# ./scripts/pool --ha: a one-member etcd (data under STATE/etcd), three masters
# on it and the slaves, which are given every master. Sourced by scripts/pool
# after its option parsing, lock, helpers (alive, stop_and_wait, wait_line) and
# certificates: mutual TLS with the pool's CA as for one master (tls_args; the
# three masters share the master certificate, and a follower passes a client's
# call on to the leader as itself, naming the client), plaintext with
# --insecure. No token endpoint here (one per master would need three ports).
# etcd itself listens on loopback only, plaintext.

ha_pids=()  # masters and etcd, stopped after the slaves by ha_cleanup

ha_free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ha_cleanup() {
  local live=() pid
  for pid in "${ha_pids[@]}"; do [ -n "$pid" ] && live+=("$pid"); done
  if [ ${#live[@]} -gt 0 ]; then
    echo "$prog: stopping the masters and etcd" >&2
    stop_and_wait "${live[@]:1}"   # the masters first (they give their leases back)
    stop_and_wait "${live[0]}"     # then etcd
  fi
}

ha_leader() {  # ha_leader TLS_DIR|"" ADDRESS...: the leader's API address; empty while none
  .venv/bin/python - "$@" <<'PY' 2>/dev/null
import sys, grpc
from xcp.v1 import pool_service_pb2 as p, pool_service_pb2_grpc as g
from xcp_control.security import pki

def channel(address):
    if not sys.argv[1]:
        return grpc.insecure_channel(address)
    tls = pki.TlsDir(sys.argv[1])
    paths = tls.client("admin")
    creds = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes(), paths.key.read_bytes(),
                                         paths.cert.read_bytes())
    return grpc.secure_channel(address, creds,
                               options=[("grpc.ssl_target_name_override", pki.MASTER_NAME)])

for address in sys.argv[2:]:
    try:
        with channel(address) as ch:
            pool = g.PoolServiceStub(ch).GetPool(p.GetPoolRequest(), timeout=1)
        if pool.master:
            print(pool.master); break
    except grpc.RpcError:
        pass
PY
}

run_ha_pool() {
  ensure_etcd || die "etcd is missing and could not be installed (apt-get install etcd-server)"
  local ec ep m i base ports=() maddrs=() mpids=()
  mkdir -p "$dir/etcd"
  ec=$(ha_free_port) ep=$(ha_free_port)
  etcd --name xcp --data-dir "$dir/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$ec" --advertise-client-urls "http://127.0.0.1:$ec" \
    --listen-peer-urls "http://127.0.0.1:$ep" --initial-advertise-peer-urls "http://127.0.0.1:$ep" \
    --initial-cluster "xcp=http://127.0.0.1:$ep" --initial-cluster-state new \
    --initial-cluster-token "xcp-pool-$$" --max-txn-ops 10000 --logger zap --log-level error \
    >"$dir/logs/etcd.log" 2>&1 &
  ha_pids+=($!)
  echo "$!" > "$dir/run/etcd.pid"
  for ((i = 0; i < 100; i++)); do
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ec" --command-timeout=1s \
      endpoint health >/dev/null 2>&1 && break
    alive "${ha_pids[0]}" || { tail -n 20 "$dir/logs/etcd.log" >&2; die "etcd did not start (log: $shown/logs/etcd.log)"; }
    sleep 0.1
  done
  for ((i = 1; i <= 3; i++)); do
    base=0; [ "$port" -gt 0 ] && base=$((port + i - 1))
    .venv/bin/xcp-master --listen "127.0.0.1:$base" --etcd "http://127.0.0.1:$ec" \
      --etcd-prefix /xcp ${tls_args[@]+"${tls_args[@]}"} >"$dir/logs/master$i.log" 2>&1 &
    mpids+=($!) ha_pids+=($!)
    echo "$!" > "$dir/run/master$i.pid"
  done
  for ((i = 1; i <= 3; i++)); do
    line=$(wait_line "$dir/logs/master$i.log" "${mpids[i-1]}" '^xcp-master: listening on ') || {
      tail -n 20 "$dir/logs/master$i.log" >&2; die "master$i did not start (log: $shown/logs/master$i.log)"; }
    maddrs+=("${line#xcp-master: listening on }")
  done
  local masters; masters=$(IFS=,; echo "${maddrs[*]}")
  for ((i = 1; i <= slaves; i++)); do
    mkdir -p "$dir/slaves/host$i"
    .venv/bin/xcp-slave --master "$masters" --listen 127.0.0.1:0 --name "host$i" \
      --state-dir "$dir/slaves/host$i" ${tls_args[@]+"${tls_args[@]}"} >"$dir/logs/host$i.log" 2>&1 &
    names+=("host$i") pids+=($!)
    echo "$!" > "$dir/run/host$i.pid"
  done
  for ((i = 0; i < slaves; i++)); do
    wait_line "$dir/logs/${names[i]}.log" "${pids[i]}" '^xcp-slave: host .* listening on ' >/dev/null ||
      die "slave ${names[i]} did not start (log: $shown/logs/${names[i]}.log)"
  done
  local leader="" lpid="" other=""
  local tls_dir=""; [ $insecure = 0 ] && tls_dir=$tls
  for ((i = 0; i < 100; i++)); do leader=$(ha_leader "$tls_dir" "${maddrs[@]}") && [ -n "$leader" ] && break; sleep 0.1; done
  local grpcurl_flags="-plaintext" tls_line="  INSECURE: plaintext on loopback" env_line="  unset XCP_TLS_DIR"
  if [ $insecure = 0 ]; then
    local tls_shown; tls_shown=$(printf '%q' "$shown/tls")
    grpcurl_flags="-cacert $tls_shown/ca.pem -cert $tls_shown/client-admin.pem -key $tls_shown/client-admin-key.pem"
    tls_line="  secure: mutual TLS with the pool's CA, certificates in $shown/tls/"
    if [ "$shown" = "$dir" ]; then env_line="  export XCP_TLS_DIR=$(printf '%q' "$tls")"
    else env_line="  export XCP_TLS_DIR=\$PWD/$tls_shown"; fi
  fi
  for ((i = 0; i < 3; i++)); do
    if [ "${maddrs[i]}" = "$leader" ]; then lpid=${mpids[i]}; else other=${maddrs[i]}; fi
  done
  {
    echo
    echo "xcp HA pool is up: etcd (data in $shown/etcd/), three masters, $slaves slave(s)"
    echo "$tls_line"
    printf '  %-8s %-17s pid %s\n' etcd "127.0.0.1:$ec" "${ha_pids[0]}"
    for ((i = 0; i < 3; i++)); do
      tag=""; [ "${maddrs[i]}" = "$leader" ] && tag="  <- leader"
      printf '  %-8s %-17s pid %-8s log %s%s\n' "master$((i + 1))" "${maddrs[i]}" "${mpids[i]}" \
        "$shown/logs/master$((i + 1)).log" "$tag"
    done
    echo
    echo "In another terminal, from $repo:"
    echo "  export PATH=\$PWD/.venv/bin:\$PATH XCP_MASTER=$masters"
    echo "$env_line"
    echo "  xcp watch                                      # in a terminal of its own"
    echo "  xcp vm-create web1 --memory 1G && xcp vm-start web1"
    echo "  grpcurl $grpcurl_flags -d '{}' ${maddrs[0]} xcp.v1.PoolService/GetPool   # who leads"
    echo "Fail the leader over:"
    echo "  kill -9 $lpid                                  # the leader, ${leader:-?}"
    echo "  grpcurl $grpcurl_flags -d '{}' $other xcp.v1.PoolService/GetPool   # a new leader within ~2 s"
    echo "  xcp host-list                                  # every host still live; any master answers"
    echo "  tail -f $shown/logs/host1.log                  # host1 streams to the new leader"
    echo
    echo "Ctrl-C stops the pool."
  }
  while :; do
    wait -n 2>/dev/null
    [ $stopping = 1 ] && break
    alive "${ha_pids[0]}" || { echo "$prog: etcd exited: see $shown/logs/etcd.log; stopping the pool" >&2; exit 1; }
    sleep 0.5
  done
}
