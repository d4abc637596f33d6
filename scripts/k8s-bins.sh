#!/usr/bin/env bash
# Builds, from the Go module proxy, into build/bin:
#   - what the tests run on the host: kube-apiserver, kube-controller-manager, kube-scheduler,
#     etcd, etcdctl and etcdutl (tools/k8s);
#   - what a node's system image carries: etcd, the kubelet (tools/k8s, the same Kubernetes
#     version as the control plane), containerd 2.x with its runc shim, runc (static, with
#     seccomp) and the CNI plugins (tools/node), the plugins under build/bin/cni;
#   - cosign (tools/cosign), which signs installer images (make push, the tests).
# Idempotent: a binary is rebuilt only when missing or older than its module's go.mod.
# Cold: ~4 min and ~3 GB of RAM for kube-apiserver on this machine kind, 2-3 min for each
# other Kubernetes command; cached: <2 s.
#   k8s-bins.sh        everything
#   k8s-bins.sh etcd   only etcd, etcdctl and etcdutl (seconds)
#   k8s-bins.sh node   only what node images carry
#   k8s-bins.sh cosign only cosign (~2 min cold)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${BIN_DIR:-$PWD/build/bin}
mkdir -p "$out/cni"
K8S_VERSION=v1.37.2
k8sld="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"

build() { # module name package [ldflags [cgo-tags]]
	local mod=$1 name=$2 pkg=$3 ld=${4:-} tags=${5:-}
	local dst=$out/$name
	if [ -x "$dst" ] && [ "$dst" -nt "$root/tools/$mod/go.mod" ]; then
		echo "k8s-bins: $name ok"
		return
	fi
	echo "k8s-bins: building $name ($pkg)"
	local t0=$SECONDS
	if [ -n "$tags" ]; then
		# runc needs cgo (its nsenter runs before the Go runtime); linked statically like
		# upstream's `make static`, so it runs in a node without a libc.
		(cd "$root/tools/$mod" && CGO_ENABLED=1 go build -trimpath -tags "$tags" \
			-ldflags "-s -w $ld -extldflags -static" -o "$dst.tmp" "$pkg")
	else
		(cd "$root/tools/$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ld" -o "$dst.tmp" "$pkg")
	fi
	mv "$dst.tmp" "$dst"
	echo "k8s-bins: $name built in $((SECONDS - t0)) s"
}

build cosign cosign github.com/sigstore/cosign/v2/cmd/cosign
[ "${1:-}" = cosign ] && exit 0

build k8s etcd go.etcd.io/etcd/server/v3
build k8s etcdctl go.etcd.io/etcd/etcdctl/v3
build k8s etcdutl go.etcd.io/etcd/etcdutl/v3
[ "${1:-}" = etcd ] && exit 0

build k8s kubelet k8s.io/kubernetes/cmd/kubelet "$k8sld"
build node containerd github.com/containerd/containerd/v2/cmd/containerd
build node containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
build node runc github.com/opencontainers/runc "-X main.version=v1.5.3" "seccomp urfave_cli_no_docs netgo osusergo"
for p in main/bridge main/loopback ipam/host-local; do
	build node "cni/${p#*/}" "github.com/containernetworking/plugins/plugins/$p"
done
[ "${1:-}" = node ] && exit 0

build k8s kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8sld"
build k8s kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8sld"
build k8s kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8sld"
