package etcd_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	etcdnode "keel/cluster/etcd"
	"keel/internal/testenv"
	"keel/internal/testenv/etcdtest"
)

// TestSnapshotRestore: a snapshot saved as a control-plane node saves it before its member
// stops (from its own member, over mTLS) restores, with the real etcdutl, into a new
// three-member cluster that has every key written before it, none written after, and the
// snapshot's revision. A copy with one byte changed is refused by etcdutl (the hash etcd put at
// its end). A directory keeps the two newest snapshots.
func TestSnapshotRestore(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client()
	ctx := context.Background()
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/app/k%03d", i), fmt.Sprintf("v%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	m0 := c.Members[0]
	local := c.ClientFor(m0.ClientURL)
	dir := t.TempDir()
	var s etcdnode.Snapshot
	for i := range 3 {
		var err error
		s, err = etcdnode.Save(ctx, local, m0.ClientURL, dir, etcdnode.Snapshot{Member: "m0", UpgradeID: fmt.Sprintf("u%d", i)}, time.Now().Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(s.File)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != s.SHA256 || int64(len(b)) != s.Size || s.Revision < 101 || s.EtcdVersion == "" {
		t.Errorf("snapshot %+v; file %d bytes", s, len(b))
	}
	list := etcdnode.Snapshots(dir)
	if len(list) != etcdnode.SnapshotsKept || list[0].File != s.File || list[0].UpgradeID != "u2" || list[1].UpgradeID != "u1" {
		t.Errorf("kept %+v, want u2 then u1", list)
	}
	if _, err := cli.Put(ctx, "/app/after", "x"); err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot %s: revision %d, %d bytes, etcd %s", filepath.Base(s.File), s.Revision, s.Size, s.EtcdVersion)
	c.StopAll()

	// One byte changed: etcdutl refuses it.
	bad := filepath.Join(t.TempDir(), "bad.db")
	b[len(b)/2] ^= 0xff
	os.WriteFile(bad, b, 0o600)
	etcdutl, err := testenv.Bin("etcdutl")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(etcdutl, "snapshot", "restore", bad, "--data-dir", filepath.Join(t.TempDir(), "d")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "expected sha256") {
		t.Errorf("restore of a changed snapshot: %v %s", err, out)
	}

	t0 := time.Now()
	r := etcdtest.StartWith(t, 3, etcdtest.Options{Restore: s.File})
	t.Logf("restored a 3-member cluster from it in %v", time.Since(t0).Round(time.Millisecond))
	rc := r.Client()
	resp, err := rc.Get(ctx, "/app/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 100 || string(resp.Kvs[42].Value) != "v42" {
		t.Errorf("restored keys: %d (want the 100 written before the snapshot, not /app/after)", len(resp.Kvs))
	}
	if resp.Header.Revision != s.Revision {
		t.Errorf("restored revision %d, snapshot's %d", resp.Header.Revision, s.Revision)
	}
	ms, err := etcdnode.List(ctx, rc)
	if err != nil || len(ms) != 3 {
		t.Errorf("restored members %v %v", ms, err)
	}
}

// TestSnapshotRoom: on a filesystem too small for the snapshot and its reserve, Save refuses
// (ErrNoRoom) and removes nothing, not even the older snapshot there; when removing the older
// one makes the room, it goes and the new one is saved. Real filesystems: tmpfs mounts of a
// set size (root only).
func TestSnapshotRoom(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	c := etcdtest.Start(t, 1)
	m0 := c.Members[0]
	cli := c.ClientFor(m0.ClientURL)
	ctx := context.Background()
	mount := func(size string) string {
		dir := t.TempDir()
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
			t.Skipf("tmpfs: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(dir, 0) })
		return dir
	}
	old := func(dir string, size int) {
		os.WriteFile(filepath.Join(dir, "etcd-m0-old-rev1.db"), make([]byte, size), 0o600)
		os.WriteFile(filepath.Join(dir, "etcd-m0-old-rev1.db.json"), []byte(fmt.Sprintf(`{"member":"m0","revision":1,"size":%d}`, size)), 0o600)
	}
	small := mount("8m")
	old(small, 1<<20)
	_, err := etcdnode.Save(ctx, cli, m0.ClientURL, small, etcdnode.Snapshot{Member: "m0"}, time.Now())
	if !errors.Is(err, etcdnode.ErrNoRoom) {
		t.Fatalf("8 MiB filesystem: %v, want ErrNoRoom", err)
	}
	t.Log(err)
	if l := etcdnode.Snapshots(small); len(l) != 1 || l[0].Revision != 1 {
		t.Errorf("after the refusal: %+v, want the old snapshot untouched", l)
	}
	roomy := mount("12m")
	old(roomy, 4<<20)
	s, err := etcdnode.Save(ctx, cli, m0.ClientURL, roomy, etcdnode.Snapshot{Member: "m0"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if l := etcdnode.Snapshots(roomy); len(l) != 1 || l[0].File != s.File {
		t.Errorf("after making room: %+v, want only the new snapshot", l)
	}
}
