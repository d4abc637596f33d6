package disk

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Device is a partition the kernel sees, as /sys/class/block describes it.
type Device struct {
	Name    string // GPT partition name (PARTNAME)
	Dev     string // device node, e.g. /dev/vda2
	Number  int    // PARTN
	Size    int64  // bytes
	Disk    string // parent disk device node, e.g. /dev/vda
	ByteOff int64  // start on the parent disk, bytes
}

// ParseUevent reads the KEY=VALUE lines of a sysfs uevent file.
func ParseUevent(text string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// ScanPartitions lists the GPT partitions under sysRoot/class/block (sysRoot is /sys on a
// node). A name seen twice (two disks carrying our layout) is an error: picking one would be
// a guess about which disk is ours.
func ScanPartitions(sysRoot string) (map[string]Device, error) { return scan(sysRoot, "") }

// ScanDisk is ScanPartitions limited to the partitions of one disk (e.g. /dev/nvme0n1).
func ScanDisk(sysRoot, diskDev string) (map[string]Device, error) { return scan(sysRoot, diskDev) }

func scan(sysRoot, only string) (map[string]Device, error) {
	dir := filepath.Join(sysRoot, "class", "block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("scan partitions: %w", err)
	}
	out := map[string]Device{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "uevent"))
		if err != nil {
			continue // raced with a removal
		}
		u := ParseUevent(string(b))
		if u["DEVTYPE"] != "partition" || u["PARTNAME"] == "" {
			continue
		}
		d := Device{Name: u["PARTNAME"], Dev: "/dev/" + u["DEVNAME"]}
		d.Number, _ = strconv.Atoi(u["PARTN"])
		d.Size = readSectors(filepath.Join(dir, e.Name(), "size")) * 512
		d.ByteOff = readSectors(filepath.Join(dir, e.Name(), "start")) * 512
		// The partition's sysfs directory sits inside its disk's; resolve the link first
		// (Join would clean ".." away lexically).
		if real, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name())); err == nil {
			d.Disk = "/dev/" + filepath.Base(filepath.Dir(real))
		}
		if only != "" && d.Disk != only {
			continue
		}
		if prev, dup := out[d.Name]; dup {
			return nil, fmt.Errorf("scan partitions: %q is on both %s and %s", d.Name, prev.Dev, d.Dev)
		}
		out[d.Name] = d
	}
	return out, nil
}

func readSectors(p string) int64 {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// WaitPartitions polls until every name is present or ctx ends. Partitions appear a few
// milliseconds after the disk driver loads, asynchronously.
func WaitPartitions(ctx context.Context, sysRoot string, names ...string) (map[string]Device, error) {
	return WaitDisk(ctx, sysRoot, "", names...)
}

// WaitDisk is WaitPartitions on one disk ("" for any).
func WaitDisk(ctx context.Context, sysRoot, diskDev string, names ...string) (map[string]Device, error) {
	for {
		found, err := scan(sysRoot, diskDev)
		if err != nil {
			return nil, err
		}
		var missing []string
		for _, n := range names {
			if _, ok := found[n]; !ok {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 {
			return found, nil
		}
		select {
		case <-ctx.Done():
			sort.Strings(missing)
			return found, fmt.Errorf("wait for partitions %v: %w", missing, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
