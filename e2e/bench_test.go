package e2e

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"keel/config"
	"keel/internal/testenv/vmtest"
)

// BenchmarkColdBoot measures QEMU start → ready line, and reports alongside it the floor in
// the same run: QEMU start → GRUB's "booting slot" line (firmware and bootloader, which keel
// does not control), and the init's own share (init start → ready, from the ready line). The
// control-plane image also carries /bin/etcd (25 MB more initramfs to unpack) and starts it.
//
//	go test -run XXX -bench ColdBoot -benchtime 3x ./e2e
func BenchmarkColdBoot(b *testing.B) {
	solo := &config.Etcd{ClientURL: "https://10.0.2.2:2379", PeerURL: "https://10.0.2.2:2380",
		InitialCluster: "bench=https://10.0.2.2:2380", Endpoints: []string{"https://10.0.2.2:2379"}}
	for _, tc := range []struct {
		name string
		o    vmtest.ImageOptions
	}{
		{"worker", vmtest.ImageOptions{VersionA: "v1.0.0-e2e"}},
		{"control-plane", vmtest.ImageOptions{VersionA: "v1.0.0-cp", Etcd: true, Config: config.Config{Hostname: "bench", Etcd: solo}}},
		// The whole system image (etcd, kubelet, containerd, runc, CNI): what the endpoint
		// pays for mounting it. No kubelet configured: the endpoint never waits for one.
		{"kube-image", vmtest.ImageOptions{VersionA: "v1.0.0-kb", Etcd: true, Kube: true}},
	} {
		b.Run(tc.name, func(b *testing.B) { coldBoot(b, tc.o) })
	}
}

func coldBoot(b *testing.B, o vmtest.ImageOptions) {
	img, err := vmtest.BuildImage(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	var total, floor, initReady time.Duration
	for b.Loop() {
		vm := vmtest.New(b, img)
		t0 := time.Now()
		vm.Start()
		vm.Expect(`keel: booting slot A`, bootTimeout)
		grub := time.Since(t0)
		r := vm.WaitReady(bootTimeout)
		total += time.Since(t0)
		floor += grub
		initReady += time.Duration((r.KernelAtReadyS - r.KernelAtInitS) * float64(time.Second))
		vm.PowerCut()
	}
	n := float64(b.N)
	b.ReportMetric(total.Seconds()/n, "s-to-ready")
	b.ReportMetric(floor.Seconds()/n, "s-to-grub")
	b.ReportMetric(initReady.Seconds()/n, "s-init-to-ready")
	b.ReportMetric(total.Seconds()/floor.Seconds(), "ready/grub-ratio")
}

// BenchmarkSlotWrite times the upgrade's slot write against its floor on the same partition,
// in the same VM and run. Ours streams the slot from the registry (gunzip, SHA-256 on the way)
// onto the partition with O_DIRECT, then reads it back and hashes it; the floor, run right
// after by a bench image's init (fault.BenchWrite), is dd oflag=direct of the same bytes from
// tmpfs plus dd iflag=direct | sha256sum of them. It also reports the memory the upgrade took
// above idle (MemAvailable, sampled every 50 ms from the pull to the end of the write) and the
// init's peak RSS.
//
//	go test -run XXX -bench SlotWrite -benchtime 3x ./e2e
func BenchmarkSlotWrite(b *testing.B) {
	img, err := vmtest.BuildImage(context.Background(), vmtest.ImageOptions{VersionA: "v1.0.0-e2e", FaultA: "bench-write"})
	if err != nil {
		b.Fatal(err)
	}
	reg := vmtest.NewRegistry(b)
	v2 := reg.PushInstaller(b, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	f := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
	var write, verify, src, hash, dd, sum, cycle, mem, hwm, size float64
	for b.Loop() {
		vm := vmtest.New(b, img)
		vm.Start()
		vm.WaitReady(bootTimeout)
		t0 := time.Now()
		id := vm.Upgrade(v2, true)
		m := vm.Expect(`keel-bench slot_write_s=([0-9.]+) source_wait_s=([0-9.]+) verify_s=([0-9.]+) hash_s=([0-9.]+) bytes=([0-9]+)`, upgradeTimeout)
		write, src, verify, hash, size = write+f(m[1]), src+f(m[2]), verify+f(m[3]), hash+f(m[4]), f(m[5])
		m = vm.Expect(`keel-bench mem_above_idle=(-?[0-9]+) init_hwm=([0-9]+)`, upgradeTimeout)
		mem, hwm = max(mem, f(m[1])), max(hwm, f(m[2]))
		m = vm.Expect(`keel-bench dd_oflag_direct_s=([0-9.]+) sha256sum_s=([0-9.]+) bytes=([0-9]+)`, upgradeTimeout)
		dd, sum = dd+f(m[1]), sum+f(m[2])
		st := vm.WaitUpgrade(id, upgradeTimeout)
		if st.Upgrade.State != "done" {
			b.Fatalf("upgrade ended %s: %s", st.Upgrade.State, st.Upgrade.Reason)
		}
		cycle += time.Since(t0).Seconds()
		vm.PowerCut()
	}
	n := float64(b.N)
	mib := size / (1 << 20)
	ours, floor := (write+verify)/n, (dd+sum)/n
	b.ReportMetric(mib/ours, "write+verify-MiB/s")
	b.ReportMetric(mib/floor, "dd+sha256sum-MiB/s")
	b.ReportMetric(mib/(dd/n), "dd-direct-MiB/s")
	// The write alone against dd alone: the figure earlier benchmarks reported (4.0 with the
	// slot copied to tmpfs first), with and without the time spent waiting for the registry.
	b.ReportMetric(write/dd, "write/dd-time-ratio")
	b.ReportMetric((write-src)/dd, "write-minus-source/dd-ratio")
	b.ReportMetric(ours/floor, "ours/floor-time-ratio")
	b.ReportMetric((write+verify-src)/n/floor, "ours-minus-source/floor-ratio")
	b.ReportMetric(src/(write+verify), "source-share")
	b.ReportMetric(hash/(write+verify), "hash-share")
	b.ReportMetric(mem/(1<<20), "peak-MiB-above-idle")
	b.ReportMetric(hwm/(1<<20), "init-peak-RSS-MiB")
	b.ReportMetric(mib, "slot-MiB")
	b.ReportMetric(cycle/n, "s-request-to-done")
}

// BenchmarkStatusLatency sends GET /v1/status at a fixed rate (20/s for 15 s, one keep-alive
// mTLS connection, through QEMU's hostfwd) to a node running two services, and reports p50
// and p99 against GET /v1/version (a handler that does nothing) sent the same way in the
// same run as the floor. It also reports PID 1's resident memory once idle.
//
//	go test -run XXX -bench StatusLatency -benchtime 1x ./e2e
func BenchmarkStatusLatency(b *testing.B) {
	img, err := vmtest.BuildImage(context.Background(), vmtest.ImageOptions{VersionA: "v1.0.0-e2e", TestSvc: true, Config: twoServices()})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		vm := vmtest.New(b, img)
		vm.Start()
		vm.WaitReady(bootTimeout)
		time.Sleep(10 * time.Second) // services up, boot work done: idle
		rss := vm.Status().InitRSSBytes
		c := vm.StreamClient("reader")
		c.Transport.(*http.Transport).DisableKeepAlives = false
		measure := func(path string) []time.Duration {
			var lat []time.Duration
			t := time.NewTicker(50 * time.Millisecond) // 20 requests a second
			defer t.Stop()
			for range 300 {
				<-t.C
				t0 := time.Now()
				resp, err := c.Get(vm.URL(path))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			return lat
		}
		pct := func(l []time.Duration, p float64) float64 { return l[int(p*float64(len(l)-1))].Seconds() * 1000 }
		floor := measure("/v1/version")
		st := measure("/v1/status")
		b.ReportMetric(float64(rss)/(1<<20), "init-RSS-MiB")
		b.ReportMetric(pct(st, 0.5), "status-p50-ms")
		b.ReportMetric(pct(st, 0.99), "status-p99-ms")
		b.ReportMetric(pct(floor, 0.5), "version-p50-ms")
		b.ReportMetric(pct(floor, 0.99), "version-p99-ms")
		b.ReportMetric(pct(st, 0.5)/pct(floor, 0.5), "status/version-p50")
		vm.PowerCut()
	}
}

// BenchmarkIdleCPU reports what an idle guest costs the host, in percent of one host core
// (QEMU's CPU time over 30 s, sampled 15 s after the guest settled): a node without
// Kubernetes (the floor), then a worker of the host's control plane, Ready with no pods of its
// own, then the same worker running the workers test's agent DaemonSet pod and two web pods.
// Under TCG these are what make the Kubernetes tests the long pole of make test: two idle
// workers take most of one of the two cores before anything is upgraded.
//
//	go test -run XXX -bench IdleCPU -benchtime 1x ./e2e
func BenchmarkIdleCPU(b *testing.B) {
	sample := func(vm *vmtest.VM) float64 {
		time.Sleep(15 * time.Second)
		t0, c0 := time.Now(), vm.CPUTime()
		time.Sleep(30 * time.Second)
		return 100 * (vm.CPUTime() - c0).Seconds() / time.Since(t0).Seconds()
	}
	var plain, kube, pods float64
	for b.Loop() {
		vm := vmtest.New(b, image(b, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"}))
		vm.Start()
		vm.WaitReady(bootTimeout)
		plain += sample(vm)
		vm.PowerCut()

		c := newKubeCluster(b)
		vm = vmtest.New(b, image(b, c.worker(b, "worker-1", "10.244.1.0/24", "v1.0.0-kw")))
		vm.Memory = kubeGuestMemory
		vm.Start()
		vm.WaitReady(bootTimeout)
		c.nodeReady(b, "worker-1", 5*time.Minute)
		kube += sample(vm)
		c.agentDaemonSet(b)
		c.webDeployment(b, 9) // the preStop hook's port: no pod is stopped here
		c.podsRunning(b, "app=agent", 1, 4*time.Minute)
		c.podsRunning(b, "app=web", 2, 4*time.Minute)
		pods += sample(vm)
		vm.PowerCut()
	}
	n := float64(b.N)
	b.ReportMetric(plain/n, "plain-%core")
	b.ReportMetric(kube/n, "kube-no-pods-%core")
	b.ReportMetric(pods/n, "kube-3-pods-%core")
	b.ReportMetric(pods/plain, "kube-3-pods/plain-ratio")
}
