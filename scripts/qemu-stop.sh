#!/usr/bin/env bash
# Shuts down the VM that scripts/qemu-run.sh started: first through the node's own API
# (ordered stop, clean unmount, poweroff), and only if that fails, by ending QEMU.
set -uo pipefail
run=${RUN_DIR:-build/run}
pki=${PKI_DIR:-build/pki}
[ -f "$run/qemu.pid" ] || { echo "stop: no VM recorded in $run"; exit 0; }
pid=$(cat "$run/qemu.pid")
kill -0 "$pid" 2>/dev/null || { echo "stop: VM not running"; rm -f "$run/qemu.pid"; exit 0; }
port=$(cat "$run/port" 2>/dev/null || echo 50000)
echo "stop: asking the node to shut down (POST /v1/shutdown)"
curl -sS --max-time 10 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
	-X POST "https://127.0.0.1:$port/v1/shutdown" || echo "stop: the endpoint did not answer"
for _ in $(seq 1 60); do
	kill -0 "$pid" 2>/dev/null || { echo "stop: VM powered off"; rm -f "$run/qemu.pid"; exit 0; }
	sleep 0.5
done
echo "stop: still running after 30 s; ending QEMU"
kill "$pid" 2>/dev/null
rm -f "$run/qemu.pid"
