#!/usr/bin/env bash
# Installs what building and booting a keel image needs on a Debian 12 host, idempotently:
#   - Debian packages (only the missing ones),
#   - the Debian kernel package, unpacked into $CACHE/kernel (no root install) with depmod run.
# Prints what it does; a second run prints "ok" lines and changes nothing.
set -euo pipefail

CACHE=${CACHE:-build/cache}
# squashfs-tools packs the slots' system images; libseccomp-dev and busybox-static: runc is
# linked statically with seccomp, busybox gives the node its mount(8) and the test images a shell;
# docker-registry (CNCF distribution) is the TLS registry of the image-trust tests, and
# ca-certificates the CA bundle every initramfs carries; gdisk (sgdisk -v) checks installed disks.
PKGS=(qemu-system-x86 qemu-utils ovmf grub-efi-amd64-bin e2fsprogs dosfstools mtools kmod curl ca-certificates
	squashfs-tools libseccomp-dev busybox-static docker-registry gdisk)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "deps: installing ${missing[*]}"
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	echo "deps: debian packages ok"
fi

# The kernel: the package linux-image-amd64 depends on (e.g. linux-image-6.1.0-41-amd64).
kdir=$CACHE/kernel
if [ -f "$kdir/.done" ]; then
	echo "deps: kernel ok ($(cat "$kdir/.done"))"
	exit 0
fi
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
	apt-get update -qq
	pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$pkg" ] || { echo "deps: cannot find the kernel package behind linux-image-amd64" >&2; exit 1; }
echo "deps: fetching $pkg"
rm -rf "$kdir" "$kdir.tmp"
mkdir -p "$kdir.tmp/dl"
(cd "$kdir.tmp/dl" && apt-get download -q "$pkg" >/dev/null)
dpkg-deb -x "$kdir.tmp"/dl/*.deb "$kdir.tmp/root"
kver=$(ls "$kdir.tmp/root/lib/modules")
# Debian's postinst runs depmod; an unpacked tree has no modules.dep until we do.
depmod -b "$kdir.tmp/root" "$kver"
rm -rf "$kdir.tmp/dl"
mv "$kdir.tmp" "$kdir"
echo "$kver" > "$kdir/.done"
echo "deps: kernel $kver unpacked in $kdir/root"
