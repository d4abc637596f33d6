#!/usr/bin/env bash
# Boots a keel disk image in QEMU the way a machine would: OVMF firmware → GRUB → kernel → init.
# The serial console shows on this terminal; the node's endpoint is forwarded to 127.0.0.1:PORT.
# Ctrl-C (or `make stop` from another terminal) shuts the node down through its own API.
#
#   scripts/qemu-run.sh DISK [PORT]      env: KVM=1 to use KVM (default TCG), RUN_DIR, PKI_DIR;
#                                        KERNEL, INITRD, APPEND boot those directly (install
#                                        mode), and NO_REBOOT=1 ends QEMU when the guest reboots
set -euo pipefail

disk=${1:?usage: qemu-run.sh DISK [PORT]}
port=${2:-50000}
run=${RUN_DIR:-build/run}
pki=${PKI_DIR:-build/pki}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$run"
if [ -f "$run/qemu.pid" ] && kill -0 "$(cat "$run/qemu.pid")" 2>/dev/null; then
	echo "run: a VM is already running (pid $(cat "$run/qemu.pid")); \`make stop\` first" >&2
	exit 1
fi
# Each run gets fresh firmware variables: OVMF keeps boot entries there.
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$run/vars.fd"
: > "$run/serial.log"
echo "$port" > "$run/port"

# -cpu max gives the guest RDRAND: without it the kernel's CRNG can take minutes to seed
# under TCG, and everything that needs randomness (DHCP, TLS) waits.
accel=(-accel tcg -cpu max)
[ "${KVM:-0}" = 1 ] && accel=(-accel kvm -cpu host)

direct=()
bootindex=0
if [ -n "${KERNEL:-}" ]; then
	direct=(-kernel "$KERNEL" -initrd "${INITRD:?INITRD with KERNEL}" -append "${APPEND:-}")
	bootindex=1 # QEMU gives -kernel index 0
fi
[ "${NO_REBOOT:-0}" = 1 ] && direct+=(-no-reboot)

qemu=(qemu-system-x86_64 "${accel[@]}" -machine q35 -m 512M -smp 1
	-display none -no-user-config -nodefaults
	-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
	-drive if=pflash,format=raw,unit=1,file="$run/vars.fd"
	-drive if=none,id=d0,format=raw,file="$disk" -device virtio-blk-pci,drive=d0,bootindex=$bootindex
	-netdev user,id=n0,hostfwd=tcp:127.0.0.1:"$port"-:50000 -device virtio-net-pci,netdev=n0
	-device i6300esb -action watchdog=reset
	-serial file:"$run/serial.log"
	-qmp unix:"$run/qmp.sock",server=on,wait=off
	"${direct[@]}"
	-daemonize -pidfile "$run/qemu.pid")
echo "run: ${qemu[*]}"
"${qemu[@]}"
pid=$(cat "$run/qemu.pid")

curl_cmd="curl --cacert $pki/ca.crt --cert $pki/admin.crt --key $pki/admin.key https://127.0.0.1:$port/v1/status"
stopping=0
on_interrupt() {
	[ "$stopping" = 1 ] && return
	stopping=1
	echo
	"$here/qemu-stop.sh" || true
}
trap on_interrupt INT TERM

# Show the console; strip the firmware's escape sequences and carriage returns.
tail -n +1 -F "$run/serial.log" 2>/dev/null | sed -u 's/\x1b\[[0-9;?=]*[A-Za-z]//g; s/\r//g' &
tailpid=$!
(
	while kill -0 "$pid" 2>/dev/null; do
		if grep -q '^keel-ready ' "$run/serial.log" 2>/dev/null; then
			printf '\n==> node ready. Its endpoint (mTLS, admin certificate):\n    %s\n==> Ctrl-C or `make stop` shuts it down.\n\n' "$curl_cmd"
			break
		fi
		sleep 0.5
	done
) &
while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
sleep 0.5
kill "$tailpid" 2>/dev/null || true
echo "run: QEMU exited"
