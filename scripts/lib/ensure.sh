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

ensure_etcd() {
  # Several masters run on etcd (Debian's etcd-server: etcd 3.4 and etcdctl);
  # the HA tests start throwaway members of it, ./scripts/pool --ha one.
  command -v etcd >/dev/null && command -v etcdctl >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing etcd-server" >&2
    (apt-get -o DPkg::Lock::Timeout=600 update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq etcd-server etcd-client) >/dev/null
    command -v etcd >/dev/null
  else
    echo "note: etcd missing and not root: the HA tests will skip" >&2
    return 1
  fi
}

ensure_libvirt() {
  # The libvirt backend's tests: libvirtd and QEMU (Debian packages), a static
  # busybox and the kernel package for scripts/build-guest, libvirt-dev and
  # pkg-config to build the libvirt-python binding (the extra '.[libvirt]').
  local pkgs="libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
              libvirt-dev pkg-config busybox-static cpio"
  local missing=() p
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing ${missing[*]}" >&2
      (export DEBIAN_FRONTEND=noninteractive
       apt-get -o DPkg::Lock::Timeout=600 update -qq &&
       apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}") >/dev/null
    else
      echo "note: ${missing[*]} missing and not root: libvirt tests will skip" >&2
      return 0
    fi
  fi
  # What udev does on a host with systemd: qemu runs as libvirt-qemu (group
  # kvm) and cannot open a root-only /dev/kvm.
  if [ -c /dev/kvm ] && [ "$(id -u)" = 0 ] && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
    chgrp kvm /dev/kvm && chmod 660 /dev/kvm
  fi
  local stamp=.venv/.xcp-libvirt want
  want=$(dpkg -s libvirt-dev 2>/dev/null | sed -n 's/^Version: //p')
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import libvirt' 2>/dev/null; then
    echo "installing the libvirt binding into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,libvirt]"
    echo "$want" > "$stamp"
  fi
}
