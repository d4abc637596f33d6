package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"

	"keel/vmtest"
)

// BenchmarkColdBoot measures QEMU start → ready line, and reports alongside it the floor in
// the same run: QEMU start → GRUB's "booting slot" line (firmware and bootloader, which keel
// does not control), and the init's own share (init start → ready, from the ready line).
//
//	go test -run XXX -bench ColdBoot -benchtime 3x ./e2e
func BenchmarkColdBoot(b *testing.B) {
	img, err := vmtest.BuildImage(context.Background(), vmtest.ImageOptions{VersionA: "e2e-v1"})
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

// BenchmarkSlotWrite times the upgrade's slot write (stream, hash, fsync) against dd
// oflag=direct of the same bytes onto the same partition, in the same VM and run: the init
// of a bench image (sequence.FaultBenchWrite) runs dd just before its own write.
//
//	go test -run XXX -bench SlotWrite -benchtime 3x ./e2e
func BenchmarkSlotWrite(b *testing.B) {
	img, err := vmtest.BuildImage(context.Background(), vmtest.ImageOptions{VersionA: "e2e-v1", FaultA: "bench-write"})
	if err != nil {
		b.Fatal(err)
	}
	reg := vmtest.NewRegistry(b)
	v2 := reg.PushInstaller(b, "keel:e2e-v2", vmtest.InstallerOptions{Version: "e2e-v2"})
	var dd, ours, hash, cycle float64
	var size float64
	for b.Loop() {
		vm := vmtest.New(b, img)
		vm.Start()
		vm.WaitReady(bootTimeout)
		t0 := time.Now()
		id := vm.Upgrade(v2, true)
		m := vm.Expect(`keel-bench dd_oflag_direct_s=([0-9.]+) bytes=([0-9]+)`, upgradeTimeout)
		d, _ := strconv.ParseFloat(m[1], 64)
		size, _ = strconv.ParseFloat(m[2], 64)
		m = vm.Expect(`keel-bench slot_write_s=([0-9.]+) hash_s=([0-9.]+)`, upgradeTimeout)
		o, _ := strconv.ParseFloat(m[1], 64)
		hs, _ := strconv.ParseFloat(m[2], 64)
		hash += hs
		st := vm.WaitUpgrade(id, upgradeTimeout)
		if st.Upgrade.State != "done" {
			b.Fatalf("upgrade ended %s: %s", st.Upgrade.State, st.Upgrade.Reason)
		}
		cycle += time.Since(t0).Seconds()
		dd += d
		ours += o
		vm.PowerCut()
	}
	n := float64(b.N)
	mib := size / (1 << 20)
	b.ReportMetric(mib/(dd/n), "dd-direct-MiB/s")
	b.ReportMetric(mib/(ours/n), "slot-write-MiB/s")
	b.ReportMetric((ours/n)/(dd/n), "write/dd-time-ratio")
	b.ReportMetric(hash/ours, "hash-share-of-write")
	b.ReportMetric(cycle/n, "s-request-to-done")
}
