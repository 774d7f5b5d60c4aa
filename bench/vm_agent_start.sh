#!/usr/bin/env bash
# Agent start-up (bench/agent_start_bench.py) inside the kernel test VM, on a kernel
# WireGuard device, with the same vng flags as tests/kernel_vm.py (TCG, 9p, 1G), and natively
# for comparison.
#   bash bench/vm_agent_start.sh [rounds]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}

source bench/vm_kernel.sh

work=$(mktemp -d /tmp/wgcable-vmastart-XXXXXX)
vng_pid=
cleanup() {
    [ -n "$vng_pid" ] && kill -KILL -- "-$vng_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== native (userspace device), load $(cut -d' ' -f1-3 /proc/loadavg)"
.venv/bin/python -m bench.agent_start_bench --repeat "$rounds"
echo "== kernel VM (kernel device, TCG)"
cat >"$work/run.sh" <<SCRIPT
modprobe wireguard
cd $PWD && PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m bench.agent_start_bench \
    --repeat $rounds --backend kernel >$work/out.txt 2>&1
SCRIPT
setsid vng --run "$kernel" --disable-kvm --force-9p --memory 1G --rwdir "$work" \
    --cwd "$PWD" --exec "sh $work/run.sh" >"$work/vng.log" 2>&1 </dev/null &
vng_pid=$!
wait "$vng_pid" || true
vng_pid=
cat "$work/out.txt" 2>/dev/null || { echo "the VM run produced nothing:"; tail -5 "$work/vng.log"; }
