# keel: a Go PID 1 that boots and upgrades Kubernetes nodes, A/B, image-based.
#
#   make run        build everything, boot the disk image in QEMU (console here, API on 127.0.0.1:$(PORT))
#   make run-install install onto a blank disk from the kernel and initramfs (needs `make registry`)
#   make stop       shut that VM down through its own API
#   make test       unit tests + QEMU end-to-end tests (what CI runs)
#   make test-unit  the quick loop: vet + unit tests, no VM
#
# Everything a fresh Debian 12 machine lacks is installed by `make deps` (apt packages only if
# missing, the Debian kernel package into build/cache). Outputs live in build/ (git-ignored).

SHELL    := /bin/bash
# A semantic version, so that nodes can order it (a lower one needs "downgrade": true):
# v0.1.0-dev.<commits>.g<hash>, ordered by the number of commits.
VERSION  ?= $(shell echo v0.1.0-dev.$$(git rev-list --count HEAD 2>/dev/null || echo 0).g$$(git rev-parse --short HEAD 2>/dev/null || echo 0))
VERSION_B ?=
PORT     ?= 50000
REGISTRY ?= 127.0.0.1:5000
KVM      ?= 0
CACHE    := build/cache
GO       ?= go
E2E_PARALLEL ?= 2
E2E_TIMEOUT  ?= 65m

UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /e2e -e /internal/testenv/ -e 'keel/cluster/kube$$' -e 'keel/cluster/etcd$$' -e 'keel/controller/api/crdtest$$' -e 'keel/controller/controllertest$$')
INTEGRATION_PKGS = ./cluster/kube ./cluster/etcd ./internal/testenv/registrytest ./controller/api/crdtest ./controller/controllertest

.PHONY: all deps k8s-bins etcd-bin node-bins cosign-bin pki keelctl key disk image push registry run run-install stop test test-unit test-integration test-e2e test-fleet bench fuzz vet clean

all: disk

deps:
	@CACHE=$(CACHE) scripts/deps.sh

# Everything from the module proxy: the host control plane the tests run (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd) and what node images carry (node-bins).
k8s-bins: deps
	@scripts/k8s-bins.sh

# Only the static etcd and etcdctl (seconds with a warm Go cache).
etcd-bin:
	@scripts/k8s-bins.sh etcd

# What each slot's system image carries: etcd, the kubelet, containerd, runc, CNI plugins.
node-bins: deps
	@scripts/k8s-bins.sh node

pki:
	@$(GO) run ./cmd/mkimage pki -dir build/pki -port $(PORT)

# The operator's CLI: build/bin/keelctl (its config for the dev node: build/keelctl.json,
# written by `make pki`).
keelctl: pki
	@$(GO) build -o build/bin/keelctl ./cmd/keelctl
	@echo "keelctl: build/bin/keelctl; export KEELCONFIG=$(CURDIR)/build/keelctl.json"

# cosign, built from the Go module proxy: it signs installer images.
cosign-bin:
	@scripts/k8s-bins.sh cosign

# The cosign key pair that signs installer images (build/keys/cosign.key, password
# $$COSIGN_PASSWORD, empty unless set); nodes built here trust cosign.pub.
key: cosign-bin
	@$(GO) run ./cmd/mkimage key -dir build/keys

# The node's disk image: slot A holds VERSION; VERSION_B, if set, fills slot B. It trusts
# build/keys/cosign.pub and may reach `make registry` (plain HTTP) as 10.0.2.2:REGISTRY's port.
disk: deps node-bins pki key
	@echo "disk: building version $(VERSION)$(if $(VERSION_B), and $(VERSION_B) in slot B)"
	@$(GO) run ./cmd/mkimage disk -version $(VERSION) $(if $(VERSION_B),-version-b $(VERSION_B)) -out build/disk.img -cache $(CACHE) -pki build/pki -insecure-registry 10.0.2.2:$(lastword $(subst :, ,$(REGISTRY)))

# An installer image for VERSION, as an OCI image layout: build/installer-VERSION/.
image: deps node-bins
	@$(GO) run ./cmd/mkimage image -version $(VERSION) -cache $(CACHE)

# Push that image to REGISTRY as keel:VERSION (start one with `make registry`) and sign it
# there with cosign and build/keys/cosign.key (offline: no transparency log).
push: image key
	@$(GO) run ./cmd/mkimage push -image build/installer-$(VERSION) -ref $(REGISTRY)/keel:$(VERSION) -allow-http

# A local registry for trying upgrades (Debian's docker-registry, images kept in
# build/registry across restarts); a VM reaches it as 10.0.2.2.
registry: deps
	@$(GO) run ./cmd/mkimage registry -addr $(REGISTRY) -dir build/registry

run: disk
	@KVM=$(KVM) scripts/qemu-run.sh build/disk.img $(PORT)

# Install mode on a blank disk: the kernel and initramfs of VERSION booted directly with
# keel.install=, its document served over HTTPS, the image pushed to REGISTRY (`make registry`
# must be running); then the installed disk boots. WIPE=1 installs over a used disk.
run-install: push pki
	@KVM=$(KVM) REGISTRY=$(REGISTRY) scripts/install-run.sh $(VERSION) $(PORT)

stop:
	@scripts/qemu-stop.sh

vet:
	@echo "vet: gofmt + go vet"
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	@$(GO) vet ./...

# The executor, the supervisor, the log rings and journal, and keelctl's waiter are concurrent: their
# tests run under -race too.
RACE_PKGS = ./upgrade ./supervisor ./events ./journal ./cmd/keelctl

test-unit: vet
	@echo "test-unit: go test $(words $(UNIT_PKGS)) packages, then -race on $(RACE_PKGS)"
	@$(GO) test -count=1 $(UNIT_PKGS)
	@$(GO) test -count=1 -race $(RACE_PKGS)

test-e2e: deps k8s-bins
	@echo "test-e2e: QEMU end-to-end tests (TCG; KVM=1 to opt in), -parallel $(E2E_PARALLEL)"
	@KVM=$(KVM) $(GO) test -count=1 -v -parallel $(E2E_PARALLEL) -timeout $(E2E_TIMEOUT) ./e2e 2>&1 | tee build/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|boot_test.go|vmtest|cluster_test.go:[0-9]+: (rolling|prober|cp[0-9]|leadership|refused|cancelled|power cut|single)|upgrade_fail_test.go:[0-9]+: [a-z-]+: first boot' ; \
	rc=$${PIPESTATUS[0]}; [ $$rc -eq 0 ] || { echo "test-e2e: FAILED (exit $$rc); from build/e2e.log:"; \
	grep -E '^\s*--- FAIL' build/e2e.log; grep -A20 '^panic: test timed out' build/e2e.log | sed '/^goroutine /,$$d'; }; exit $$rc

# Against a real etcd and kube-apiserver on 127.0.0.1.
test-integration: deps k8s-bins
	@echo "test-integration: $(INTEGRATION_PKGS) against a real kube-apiserver and real etcd clusters"
	@$(GO) test -count=1 $(INTEGRATION_PKGS)

test: deps test-unit test-integration test-e2e

# keel-controller upgrading a whole real cluster (three control-plane VMs with etcd and a
# kubelet, two workers) under one plan: opt-in, about 15 minutes (e2e/fleet_test.go).
test-fleet: deps k8s-bins
	@mkdir -p build
	@KEEL_E2E_FLEET=1 KVM=$(KVM) $(GO) test -count=1 -v -run TestFleet -timeout 90m ./e2e 2>&1 | tee build/fleet.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|fleet_test.go' ; exit $${PIPESTATUS[0]}

# Boot time, slot-write throughput, status latency and idle guests' host CPU (see e2e/bench_test.go).
bench: deps k8s-bins
	@$(GO) test -run XXX -bench . -benchtime 3x ./e2e | grep -E '^(Benchmark|ok|FAIL)'

# Short fuzzing of the decoders (the seeds always run as part of test-unit).
fuzz:
	@$(GO) test -run XXX -fuzz FuzzParseEnv -fuzztime 20s ./boot
	@$(GO) test -run XXX -fuzz FuzzDecodeCopy -fuzztime 20s ./disk/meta
	@$(GO) test -run XXX -fuzz FuzzDecode -fuzztime 20s ./upgrade

clean:
	@-scripts/qemu-stop.sh >/dev/null 2>&1
	rm -rf build/disk.img build/images build/run build/vmtest build/e2e.log build/installer-*
