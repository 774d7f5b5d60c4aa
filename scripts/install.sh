#!/usr/bin/env bash
# Sets up what the agent, the lab and `wgcable demo` need on Debian 12, as root, and nothing
# more: a first run takes about a minute (README). The test tiers (dev tools, the kernel VM,
# the API server) are set up by scripts/install-test.sh, which the test command runs.
# Safe to run again: apt is consulted only when a tool is missing, pip only when
# pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(wireguard-go wireguard-tools iproute2 iputils-ping nftables iperf3 procps util-linux graphviz)
tools=(wireguard-go wg ip ping nft iperf3 pkill nsenter dot)

source scripts/lib-install.sh
apt_for_tools debs tools

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "install.sh: creating .venv"
    "$python" -m venv .venv
fi
# The package and its run-time dependencies only; the dev extra is the test set-up's.
pip_when_changed .venv/.wgcable-installed-run '.'
echo "install.sh: ready"
