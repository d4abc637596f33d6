package etcd_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
