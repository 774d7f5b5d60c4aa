#!/usr/bin/env bash
# Measures the kernel test tier's VM: boot to first guest command, a whole empty VM run, and
# the whole `kernel` pytest tier. Same vng flags as tests/kernel_vm.py (TCG, 9p, 1G).
#   bash bench/vm_boot.sh [runs]        (default 3 runs of the empty VM; the tier runs once)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}

source bench/vm_kernel.sh

work=$(mktemp -d /tmp/wgcable-vmbench-XXXXXX)
vng_pid=
cleanup() {
    # End only the vng/qemu group this script started, by its id.
    [ -n "$vng_pid" ] && kill -KILL -- "-$vng_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
echo "kernel: $kernel ($(nproc) host cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
for i in $(seq "$runs"); do
    rm -f "$work/started"
    t0=$(now)
    setsid vng --run "$kernel" --disable-kvm --force-9p --memory 1G --rwdir "$work" --verbose \
        --exec ": > $work/started" >"$work/vng.log" 2>&1 </dev/null &
    vng_pid=$!
    boot=
    while kill -0 "$vng_pid" 2>/dev/null; do
        if [ -z "$boot" ] && [ -e "$work/started" ]; then boot=$(now); fi
        sleep 0.05
    done
    wait "$vng_pid" || true
    vng_pid=
    end=$(now)
    [ -n "$boot" ] || [ ! -e "$work/started" ] || boot=$end
    if [ -z "$boot" ]; then
        echo "run $i: guest command never ran; last log lines:"; tail -5 "$work/vng.log"; exit 1
    fi
    printf 'run %d: boot to first command %.1f s, whole empty VM run %.1f s\n' \
        "$i" "$(awk "BEGIN{print $boot - $t0}")" "$(awk "BEGIN{print $end - $t0}")"
done

echo "kernel tier (pytest -m kernel tests):"
t0=$(now)
.venv/bin/pytest -m kernel tests -q -p no:cacheprovider 2>&1 | tail -4
printf 'kernel tier wall time: %.1f s\n' "$(awk "BEGIN{print $(now) - $t0}")"
