# Sourced by the VM benchmarks (vm_boot.sh, vm_agent_start.sh): sets $kernel to the newest kernel image whose
# modules include wireguard.ko (or $WGCABLE_VM_KERNEL), and puts the venv's vng on PATH.
kernel=${WGCABLE_VM_KERNEL:-}
if [ -z "$kernel" ]; then
    for image in $(ls -v /boot/vmlinuz-* 2>/dev/null); do
        ver=${image#/boot/vmlinuz-}
        compgen -G "/lib/modules/$ver/kernel/drivers/net/wireguard/wireguard.ko*" >/dev/null \
            && kernel=$image
    done
fi
[ -n "$kernel" ] || { echo "no /boot/vmlinuz-* with wireguard.ko: run scripts/install-vm.sh" >&2; exit 1; }
export PATH="$PWD/.venv/bin:$PATH"  # vng runs virtme-run by name
