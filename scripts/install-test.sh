#!/usr/bin/env bash
# Sets up what the test tiers need, on top of scripts/install.sh (which runs first): the
# dev tools (pytest, ruff, mypy, ...), protoc, the kernel VM and the API server. Debian 12,
# as root. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh

debs=(protobuf-compiler)  # protoc: the NAT discovery .proto is checked against our descriptor
tools=(protoc)
# prometheus and promtool: the alert rules' unit tests and a real Prometheus scraping a lab.
debs+=(prometheus)
tools+=(prometheus promtool)

source scripts/lib-install.sh
# Debian's prometheus starts a system daemon on install; the tests start their own, by PID,
# in a lab namespace. A policy-rc.d that says 101 forbids service starts during the install
# (ours is removed afterwards; one that was already there is left alone).
had_prometheus=$(command -v prometheus || true)
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ] && [ "$(id -u)" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    trap 'rm -f "$policy"' EXIT
fi
apt_for_tools debs tools
if [ "$made_policy" = 1 ]; then rm -f "$policy"; trap - EXIT; fi
# Nor at the next boot, when we installed it.
if [ -z "$had_prometheus" ] && [ -d /run/systemd/system ]; then
    systemctl disable --quiet prometheus 2>/dev/null || true
fi

pip_when_changed .venv/.wgcable-installed '.[dev]'
# The kernel test tier: qemu, a Debian kernel with WireGuard, virtme-ng (never fails the set-up:
# without it the kernel tests are skipped with the reason).
bash scripts/install-vm.sh
# The Kubernetes test tier: etcd and a kube-apiserver built from Debian's source package
# (cached under ~/.cache/wgcable; the first build takes a few minutes). Never fails the
# set-up: without it those tests are skipped with the reason.
bash scripts/install-k8s.sh
echo "install-test.sh: ready"
