package e2e

import (
	"context"
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
