#!/usr/bin/env bash
# Install mode, tried locally: a blank disk (build/install/disk.img), keel's kernel and initramfs
# booted directly with install arguments (as PXE or a USB stick would boot them), the install
# document served over HTTPS by `mkimage serve-install` (its CA pinned on the command line), the
# installer image pulled from `make registry` (which must be running; `make run-install` pushes
# to it). When the install is done, the VM boots from its disk like `make run`.
#
#   scripts/install-run.sh VERSION [PORT]   env: KVM, REGISTRY (127.0.0.1:5000), WIPE=1
set -euo pipefail

version=${1:?usage: install-run.sh VERSION [PORT]}
port=${2:-50000}
registry=${REGISTRY:-127.0.0.1:5000}
dir=build/install
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"

go build -o build/bin/mkimage ./cmd/mkimage
build/bin/mkimage install-doc -image "10.0.2.2:${registry##*:}/keel:$version" -out "$dir/node.json" \
	-insecure-registry "10.0.2.2:${registry##*:}"
rm -f "$dir/args"
build/bin/mkimage serve-install -dir "$dir" -addr 127.0.0.1:0 -args-file "$dir/args" &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$dir/args" ] && break; sleep 0.1; done
[ -s "$dir/args" ] || { echo "install-run: serve-install did not start" >&2; exit 1; }

disk=$dir/disk.img
[ -f "$disk" ] || truncate -s 1G "$disk"
kernel=$(ls build/cache/kernel/root/boot/vmlinuz-* | head -1)
sel=/dev/vda
[ "${WIPE:-0}" = 1 ] && sel=$sel,wipe
echo "install-run: installing $version onto $disk (a blank disk is made once; WIPE=1 installs over a used one)"
KERNEL=$kernel INITRD=build/images/initramfs-$version NO_REBOOT=1 \
	APPEND="console=ttyS0,115200 panic=10 keel.install=$sel $(cat "$dir/args")" \
	"$here/qemu-run.sh" "$disk" "$port"
if grep -q '^keel-install: done' "${RUN_DIR:-build/run}/serial.log"; then
	kill $srv 2>/dev/null || true
	echo "install-run: installed; booting the disk"
	exec "$here/qemu-run.sh" "$disk" "$port"
fi
echo "install-run: the install did not complete (see the console above)" >&2
exit 1
