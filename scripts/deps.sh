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

# Firmware the carried drivers declare (tg3's, for some Broadcom NICs) is in Debian's
# non-free-firmware component, which this host's apt sources may not list: the pinned package
# is fetched through a private source list into $CACHE/firmware (no change to the system's apt
# configuration, nothing installed), and image builds carry the declared files from there.
FW_PKG=firmware-misc-nonfree=20230210-5
fwdir=$CACHE/firmware
if [ -f "$fwdir/.done" ]; then
	echo "deps: firmware ok ($(cat "$fwdir/.done"))"
else
	echo "deps: fetching $FW_PKG (Debian non-free-firmware)"
	rm -rf "$fwdir.tmp"
	mkdir -p "$fwdir.tmp/apt/lists/partial" "$fwdir.tmp/apt/cache/archives/partial" "$fwdir.tmp/dl"
	apt=$(realpath "$fwdir.tmp/apt")
	echo "deb http://deb.debian.org/debian bookworm non-free-firmware" > "$apt/sources.list"
	apt_fw=(-q -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache")
	apt-get "${apt_fw[@]}" update >/dev/null
	(cd "$fwdir.tmp/dl" && apt-get "${apt_fw[@]}" download "$FW_PKG" >/dev/null 2>&1)
	dpkg-deb -x "$fwdir.tmp"/dl/*.deb "$fwdir.tmp/root"
	rm -rf "$fwdir.tmp/dl" "$fwdir.tmp/apt" "$fwdir" # a run cut before .done left it half made
	mv "$fwdir.tmp" "$fwdir"
	echo "$FW_PKG" > "$fwdir/.done"
	echo "deps: firmware unpacked in $fwdir/root/lib/firmware"
fi

# Prometheus (Debian's package, pinned) for the test that scrapes a node's /metrics: only its
# binary, unpacked into $CACHE/prometheus (installing the package would start a service).
PROM_PKG=prometheus=2.42.0+ds-5+deb12u1
promdir=$CACHE/prometheus
if [ -f "$promdir/.done" ]; then
	echo "deps: prometheus ok ($(cat "$promdir/.done"))"
else
	echo "deps: fetching $PROM_PKG"
	rm -rf "$promdir.tmp"
	mkdir -p "$promdir.tmp/dl"
	(cd "$promdir.tmp/dl" && apt-get download -q "$PROM_PKG" >/dev/null 2>&1) || { apt-get update -qq && (cd "$promdir.tmp/dl" && apt-get download -q "$PROM_PKG" >/dev/null); }
	dpkg-deb -x "$promdir.tmp"/dl/*.deb "$promdir.tmp/root"
	mkdir -p "$promdir.tmp/bin"
	mv "$promdir.tmp/root/usr/bin/prometheus" "$promdir.tmp/bin/"
	rm -rf "$promdir.tmp/dl" "$promdir.tmp/root" "$promdir" # a run cut before .done left it half made
	mv "$promdir.tmp" "$promdir"
	echo "$PROM_PKG" > "$promdir/.done"
	echo "deps: prometheus in $promdir/bin"
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
