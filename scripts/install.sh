#!/usr/bin/env bash
# Sets up everything wgcable and its tests need on Debian 12, as root. Safe to run again:
# apt and pip skip what is already there, and apt is only consulted when a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(wireguard-go wireguard-tools iproute2 iputils-ping nftables iperf3 procps util-linux
      protobuf-compiler)  # protoc: the NAT discovery .proto is checked against our descriptor
tools=(wireguard-go wg ip ping nft iperf3 pkill nsenter protoc)

missing=0
for t in "${tools[@]}"; do command -v "$t" >/dev/null 2>&1 || missing=1; done
if [ "$missing" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install.sh: Debian packages are missing and only root can install them: ${debs[*]}" >&2
        exit 1
    fi
    echo "install.sh: installing Debian packages: ${debs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "install.sh: creating .venv"
    "$python" -m venv .venv
fi
# Re-install only when the project's declared dependencies changed.
stamp=.venv/.wgcable-installed
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    echo "install.sh: installing Python dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    cp pyproject.toml "$stamp"
fi
# The kernel test tier: qemu, a Debian kernel with WireGuard, virtme-ng (never fails the set-up:
# without it the kernel tests are skipped with the reason).
bash scripts/install-vm.sh
# The Kubernetes test tier: etcd and a kube-apiserver built from Debian's source package
# (cached under ~/.cache/wgcable; the first build takes a few minutes). Never fails the
# set-up: without it those tests are skipped with the reason.
bash scripts/install-k8s.sh
echo "install.sh: ready"
