#!/usr/bin/env bash
# Builds the real kube-apiserver, etcd and etcdctl that the Kubernetes and etcd tests run,
# from the Go module proxy (tools/k8s has its own go.mod), into build/bin. Idempotent: a
# binary is rebuilt only when missing or older than tools/k8s/go.mod. Cold: ~4 min and ~3 GB
# of RAM for kube-apiserver on this machine kind; cached: <2 s.
set -euo pipefail
out=${BIN_DIR:-$PWD/build/bin}
mkdir -p "$out"
cd "$(dirname "$0")/../tools/k8s"
stamp=go.mod
build() { # name package [ldflags]
	local name=$1 pkg=$2 ld=${3:-}
	if [ -x "$out/$name" ] && [ "$out/$name" -nt "$stamp" ]; then
		echo "k8s-bins: $name ok"
		return
	fi
	echo "k8s-bins: building $name ($pkg)"
	local t0=$SECONDS
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ld" -o "$out/$name.tmp" "$pkg"
	mv "$out/$name.tmp" "$out/$name"
	echo "k8s-bins: $name built in $((SECONDS - t0)) s"
}
build etcd go.etcd.io/etcd/server/v3
build etcdctl go.etcd.io/etcd/etcdctl/v3
# `k8s-bins.sh etcd`: only etcd and etcdctl (the node image carries etcd; seconds, not minutes).
[ "${1:-}" = etcd ] && exit 0
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver \
	"-X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
