package etcd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
)

// Snapshot is a saved etcd snapshot: the member's database at one revision, as etcd's snapshot
// API streams it (what `etcdutl snapshot restore` reads). A JSON file beside it (.json) keeps
// this description.
type Snapshot struct {
	File        string    `json:"file"`
	Member      string    `json:"member"`
	UpgradeID   string    `json:"upgrade_id,omitempty"`
	Revision    int64     `json:"revision"`
	EtcdVersion string    `json:"etcd_version,omitempty"` // its storage version (the member's version before one is written): the etcd to restore it with
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"` // of the whole file
	TakenAt     time.Time `json:"taken_at"`
}

// SnapshotsKept is how many snapshots a directory keeps: the newest and the one before.
const SnapshotsKept = 2

// ErrNoRoom is Save's answer when the snapshot would not fit in the directory.
var ErrNoRoom = errors.New("etcd: snapshot does not fit")

// Reserve is the room a snapshot leaves free in its directory's filesystem (STATE also holds
// the config and the PKI).
const Reserve = 8 << 20

// Save streams a snapshot from the member cli is connected to (one endpoint) into dir, checks
// etcd's own SHA-256 trailer, syncs it, and keeps the SnapshotsKept newest. A snapshot that
// would not fit (the member's database size plus Reserve) even once the older snapshots are
// removed is ErrNoRoom and removes nothing; the older ones are removed first only when that
// makes the room. A save that fails leaves no partial file behind.
func Save(ctx context.Context, cli *clientv3.Client, endpoint, dir string, meta Snapshot, now time.Time) (Snapshot, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	if err := syncDir(filepath.Dir(dir)); err != nil { // the directory itself, if just made
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: status of %s: %w", endpoint, err)
	}
	tidy(dir)
	free, err := freeBytes(dir)
	if err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	need := st.DbSize + Reserve
	if need > free {
		var reclaim int64
		for _, s := range Snapshots(dir) {
			reclaim += s.Size
		}
		if need > free+reclaim {
			return Snapshot{}, fmt.Errorf("%w in %s: %d MiB needed, %d MiB free (%d MiB more in older snapshots)", ErrNoRoom, dir, need>>20, free>>20, reclaim>>20)
		}
		prune(dir, 0)
	}
	resp, err := cli.SnapshotWithVersion(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	defer resp.Snapshot.Close()
	partial := filepath.Join(dir, ".partial")
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	defer os.Remove(partial) // a no-op once renamed
	whole := sha256.New()
	tr := &trailer{h: sha256.New()}
	n, err := io.Copy(io.MultiWriter(f, whole, tr), resp.Snapshot)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	if !tr.ok() {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %d bytes whose SHA-256 trailer does not match (a truncated or corrupted stream)", n)
	}
	s := meta
	if s.Revision, err = revision(partial); err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	s.EtcdVersion, s.Size, s.TakenAt = resp.Version, n, now.UTC()
	if s.EtcdVersion == "" {
		// The stream names the storage version only once the member has written it, which
		// a young cluster may not have yet: the member's own version then says which etcd
		// wrote (and restores) the file.
		s.EtcdVersion = st.Version
	}
	s.SHA256 = hex.EncodeToString(whole.Sum(nil))
	s.File = filepath.Join(dir, fmt.Sprintf("etcd-%s-%s-rev%d.db", s.Member, s.TakenAt.Format("20060102T150405Z"), s.Revision))
	if err := os.Rename(partial, s.File); err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := writeSynced(s.File+".json", b); err != nil {
		return Snapshot{}, fmt.Errorf("etcd: snapshot: %w", err)
	}
	prune(dir, SnapshotsKept)
	return s, nil
}

func freeBytes(dir string) (int64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	return int64(fs.Bavail) * int64(fs.Bsize), nil
}

// revision reads a snapshot's revision as `etcdutl snapshot status` does: the newest key of
// the database's "key" bucket, whose keys begin with their 8-byte big-endian main revision.
// (etcd sends no header with the stream, and the cluster may take writes while it streams.)
func revision(path string) (int64, error) {
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	var rev int64
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		if b == nil {
			return errors.New("no key bucket: not an etcd database")
		}
		if k, _ := b.Cursor().Last(); len(k) >= 8 {
			rev = int64(binary.BigEndian.Uint64(k[:8]))
		}
		return nil
	})
	return rev, err
}

// Snapshots lists the snapshots saved in dirs, newest first (a directory that does not exist
// holds none).
func Snapshots(dirs ...string) []Snapshot {
	var out []Snapshot
	for _, d := range dirs {
		ms, _ := filepath.Glob(filepath.Join(d, "etcd-*.db.json"))
		for _, m := range ms {
			b, err := os.ReadFile(m)
			var s Snapshot
			if err != nil || json.Unmarshal(b, &s) != nil {
				continue
			}
			if _, err := os.Stat(strings.TrimSuffix(m, ".json")); err != nil {
				continue // its database is gone: not a snapshot any more
			}
			s.File = strings.TrimSuffix(m, ".json") // wherever the directory is mounted now
			out = append(out, s)
		}
	}
	// Newest first by revision, which only grows within a cluster (a clock that jumps must
	// not make an old snapshot look new); then by time.
	sort.Slice(out, func(i, j int) bool {
		if out[i].Revision != out[j].Revision {
			return out[i].Revision > out[j].Revision
		}
		return out[i].TakenAt.After(out[j].TakenAt)
	})
	return out
}

// prune keeps the keep newest snapshots of dir and removes the rest.
func prune(dir string, keep int) {
	for i, s := range Snapshots(dir) {
		if i >= keep {
			os.Remove(s.File + ".json")
			os.Remove(s.File)
		}
	}
}

// tidy removes what a cut-short save left behind: the partial stream, a description being
// written, a database whose description was never written, a description whose database is
// gone.
func tidy(dir string) {
	os.Remove(filepath.Join(dir, ".partial"))
	tmps, _ := filepath.Glob(filepath.Join(dir, "etcd-*.db.json.tmp"))
	for _, t := range tmps {
		os.Remove(t)
	}
	dbs, _ := filepath.Glob(filepath.Join(dir, "etcd-*.db"))
	for _, db := range dbs {
		if _, err := os.Stat(db + ".json"); err != nil {
			os.Remove(db)
		}
	}
	descs, _ := filepath.Glob(filepath.Join(dir, "etcd-*.db.json"))
	for _, d := range descs {
		if _, err := os.Stat(strings.TrimSuffix(d, ".json")); err != nil {
			os.Remove(d)
		}
	}
}

func writeSynced(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// trailer checks etcd's snapshot stream format: the database followed by the SHA-256 of it.
// It hashes everything but the last 32 bytes seen so far.
type trailer struct {
	h    hash.Hash
	tail []byte
}

func (t *trailer) Write(p []byte) (int, error) {
	t.tail = append(t.tail, p...)
	if n := len(t.tail) - sha256.Size; n > 0 {
		t.h.Write(t.tail[:n])
		t.tail = append(t.tail[:0], t.tail[n:]...)
	}
	return len(p), nil
}

func (t *trailer) ok() bool {
	return len(t.tail) == sha256.Size && bytes.Equal(t.h.Sum(nil), t.tail)
}
