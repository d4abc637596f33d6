package sequence

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"keel/disk"
	"keel/machine"
	"keel/upgrade"
)

// The slot-write benchmark's side in the node (fault.BenchWrite, test images only): memory
// watched from the pull to the end of the write, and the floor of the write measured on the
// same partition right after it: dd oflag=direct of the same bytes, then sha256sum of them read
// back with O_DIRECT. The results are console lines the benchmark reads (e2e/bench_test.go).

var memWatch struct {
	once      sync.Once
	mu        sync.Mutex
	idle, min int64 // MemAvailable before the pull, and its lowest since
	stop      chan struct{}
}

// startMemWatch samples MemAvailable every 50 ms until the bench report.
func startMemWatch() {
	memWatch.once.Do(func() {
		memWatch.idle = memAvailable()
		memWatch.min = memWatch.idle
		memWatch.stop = make(chan struct{})
		go func() {
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-memWatch.stop:
					return
				case <-t.C:
				}
				if m := memAvailable(); m > 0 {
					memWatch.mu.Lock()
					memWatch.min = min(memWatch.min, m)
					memWatch.mu.Unlock()
				}
			}
		}()
	})
}

func memAvailable() int64 { return machine.MemInfo("MemAvailable") }

func selfHWM() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// benchFloor reports the write's figures, then times dd oflag=direct and sha256sum over the
// same bytes on the same partition, and the memory the upgrade took above idle.
func benchFloor(n *Node, dev string, a upgrade.ActWriteSlot, st disk.WriteStats) {
	con := n.opts.Console
	fmt.Fprintf(con, "keel-bench slot_write_s=%.3f source_wait_s=%.3f verify_s=%.3f hash_s=%.3f bytes=%d\n",
		st.Write.Seconds(), st.SourceWait.Seconds(), st.Verify.Seconds(), st.Hash.Seconds(), st.Bytes)
	if memWatch.stop != nil {
		close(memWatch.stop)
		memWatch.mu.Lock()
		above := memWatch.idle - memWatch.min
		memWatch.mu.Unlock()
		fmt.Fprintf(con, "keel-bench mem_above_idle=%d init_hwm=%d\n", above, selfHWM())
	}
	// The same bytes, from tmpfs (this copy is the benchmark's, not the upgrade's).
	tmp := "/tmp/bench-slot"
	if err := copyPrefix(dev, tmp, a.Size); err != nil {
		n.warn("bench: %v", err)
		return
	}
	defer os.Remove(tmp)
	t0 := time.Now()
	ddw := exec.Command("/bin/dd", "if="+tmp, "of="+dev, "bs=4M", "oflag=direct")
	var ddOut bytes.Buffer
	ddw.Stdout, ddw.Stderr = &ddOut, &ddOut
	if err := n.Reaper.Run(ddw); err != nil {
		n.warn("bench: dd: %v: %s", err, ddOut.Bytes())
		return
	}
	ddT := time.Since(t0)
	// dd reads the slot's bytes (count in bytes) with O_DIRECT; sha256sum hashes them as
	// they come: read and hash overlap, as in the node's own read-back.
	rd := exec.Command("/bin/dd", "if="+dev, "bs=4M", "iflag=direct,count_bytes", "count="+strconv.FormatInt(a.Size, 10))
	sum := exec.Command("/bin/sha256sum")
	pipe, err := rd.StdoutPipe()
	if err != nil {
		n.warn("bench: %v", err)
		return
	}
	sum.Stdin = pipe
	var out bytes.Buffer
	sum.Stdout = &out
	t1 := time.Now()
	if err := n.Reaper.Start(rd); err != nil {
		n.warn("bench: dd read: %v", err)
		return
	}
	if err := n.Reaper.Start(sum); err != nil {
		n.warn("bench: sha256sum: %v", err)
		return
	}
	if err := n.Reaper.Wait(rd); err != nil {
		n.warn("bench: dd read: %v", err)
	}
	if err := n.Reaper.Wait(sum); err != nil {
		n.warn("bench: sha256sum: %v", err)
		return
	}
	hashT := time.Since(t1)
	if !strings.HasPrefix(out.String(), a.SHA256) {
		n.warn("bench: sha256sum says %q, want %s", out.String(), a.SHA256)
	}
	fmt.Fprintf(con, "keel-bench dd_oflag_direct_s=%.3f sha256sum_s=%.3f bytes=%d\n", ddT.Seconds(), hashT.Seconds(), a.Size)
}

func copyPrefix(dev, dst string, size int64) error {
	in, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	_, err = io.Copy(out, io.LimitReader(in, size))
	return err
}
