# Shared by scripts/test and scripts/pool: install what is missing, quietly,
# and only once (a stamp remembers what was installed for which pyproject).

ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    echo "creating .venv" >&2
    python3 -m venv .venv
  fi
  local stamp=.venv/.xcp-installed want
  want=$(cat pyproject.toml | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing xcp-control and its test tools into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

ensure_system_tools() {
  # Fault tests make test hosts with ip netns and partition them with nft.
  command -v nft >/dev/null && command -v ip >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing nftables and iproute2" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2) >/dev/null
  else
    echo "note: nft/ip missing and not root: fault tests will skip" >&2
  fi
}

ensure_prometheus() {
  # The metrics tests start a real Prometheus server (Debian's package) that
  # scrapes a master and its slaves.
  command -v prometheus >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing prometheus" >&2
    (apt-get -o DPkg::Lock::Timeout=600 update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends prometheus) >/dev/null
  else
    echo "note: prometheus missing and not root: the metrics scrape test will skip" >&2
  fi
}

ensure_node_packages() {
  # The Node.js client test (clients/node) needs @grpc/grpc-js and @grpc/proto-loader.
  [ -f clients/node/package.json ] || return 0
  command -v npm >/dev/null || { echo "note: npm missing: the Node.js client test will skip" >&2; return 0; }
  local stamp=clients/node/node_modules/.xcp-installed want
  want=$(cat clients/node/package.json clients/node/package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the Node.js client's packages" >&2
    (cd clients/node && npm ci --silent --no-audit --no-fund >/dev/null 2>&1 || npm install --silent --no-audit --no-fund >/dev/null)
    echo "$want" > "$stamp"
  fi
}
