#!/usr/bin/env bash
# Installs what the `kernel` test tier needs to boot a WireGuard-capable kernel in a VM
# (tests/kernel_vm.py): QEMU, a static busybox, a Debian kernel image with its modules, and
# virtme-ng in .venv. Debian 12, as root. Idempotent: apt is consulted only when something
# is missing, so a second run takes well under a second.
#
# The kernel package only drops /boot/vmlinuz-<ver> and /lib/modules/<ver>: the running kernel
# is untouched. On a machine with a boot loader, installing a kernel package would add a boot
# entry, so there this script leaves the kernel to you (and the kernel tests skip, saying so).
#
# Never fails the caller: the kernel tier is optional and skips with a reason when incomplete.
set -uo pipefail
cd "$(dirname "$0")/.."

VIRTME_NG_VERSION=1.42  # pinned: the plugin relies on its --exec/--rwdir/console behaviour

log() { echo "install-vm.sh: $*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

# A /boot/vmlinuz-<ver> whose modules include wireguard.ko: what the VM boots.
have_wg_kernel() {
    local image ver
    for image in /boot/vmlinuz-*; do
        [ -r "$image" ] || continue
        ver=${image#/boot/vmlinuz-}
        compgen -G "/lib/modules/$ver/kernel/drivers/net/wireguard/wireguard.ko*" >/dev/null && return 0
    done
    return 1
}

has_bootloader() {
    command -v update-grub >/dev/null 2>&1 && return 0
    [ -d /boot/grub ] || [ -d /boot/loader ] || [ -d /boot/efi/loader ] || [ -d /boot/efi/EFI ]
}

debs=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || debs+=(qemu-system-x86)
# virtme-ng copies busybox into its initramfs, so it must be the static build.
installed busybox-static || debs+=(busybox-static)
if ! have_wg_kernel; then
    if has_bootloader; then
        log "no /boot/vmlinuz-* with wireguard.ko, and this machine has a boot loader:" \
            "not installing a kernel package here (it would add a boot entry)." \
            "Install one yourself (apt-get install linux-image-amd64) to enable the kernel tests."
    else
        debs+=(linux-image-amd64)
        # A kernel package needs an initramfs generator. initramfs-tools drags in udev and a
        # systemd upgrade; tiny-initramfs is a few KiB and enough (virtme-ng makes its own
        # initramfs anyway). It conflicts with initramfs-tools/dracut: add it only when neither
        # generator is present.
        if ! installed initramfs-tools && ! installed dracut && ! installed tiny-initramfs; then
            debs+=(tiny-initramfs)
        fi
    fi
fi

if [ "${#debs[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        log "missing Debian packages and not root: ${debs[*]} (kernel tests will be skipped)"
    else
        log "installing Debian packages: ${debs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # --no-install-recommends: qemu's Depends (qemu-system-data, seabios, ipxe-qemu) are
        # enough to boot; its Recommends (GUI, OVMF, block extras) are not needed.
        if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null; }; then
            log "apt-get failed: kernel tests will be skipped"
        fi
    fi
fi

# virtme-ng in the project's venv (the plugin runs .venv/bin/vng and its helper scripts).
if [ -x .venv/bin/python ]; then
    if ! .venv/bin/python - "$VIRTME_NG_VERSION" <<'EOF' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(m.version("virtme-ng") != sys.argv[1])
EOF
        log "installing virtme-ng $VIRTME_NG_VERSION into .venv"
        .venv/bin/python -m pip install -q "virtme-ng==$VIRTME_NG_VERSION" \
            || log "pip install virtme-ng failed: kernel tests will be skipped"
    fi
else
    log "no .venv yet: run scripts/install.sh first (it calls this script)"
fi
exit 0
