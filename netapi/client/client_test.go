package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"keel/netapi"
	"keel/pki"
)

// keelNode is the node side of the real endpoint (netapi's server), with what a node would
// answer; the methods the controller never calls are left to the embedded nil interface.
type keelNode struct {
	netapi.Node
	st   netapi.Status
	busy bool
	got  []netapi.UpgradeRequest
}

func (k *keelNode) Status() netapi.Status { return k.st }
func (k *keelNode) StartUpgrade(r netapi.UpgradeRequest) (netapi.UpgradeAccepted, error) {
	if k.busy {
		return netapi.UpgradeAccepted{}, fmt.Errorf("%w: upgrade u0 is in progress", netapi.ErrConflict)
	}
	k.got = append(k.got, r)
	return netapi.UpgradeAccepted{ID: "u1", Status: "accepted"}, nil
}

// TestClientAgainstTheEndpoint: the controller's client speaks to netapi's real server over
// mTLS: status, an upgrade started with the plan's request, a busy node's 409, a reader
// certificate's 403, a node that does not answer.
func TestClientAgainstTheEndpoint(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.EnsureDev(dir, []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	read := func(n string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	node := &keelNode{st: netapi.Status{Version: "v1"}}
	srvTLS, err := netapi.TLSConfig(read("ca.crt"), read("server.crt"), read("server.key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, _ := netapi.Serve(ln, netapi.New(netapi.Options{Node: node, Log: log}), srvTLS, log)
	defer srv.Close()
	addr := func(name string) (string, error) {
		if name == "gone" {
			return "127.0.0.1:1", nil
		}
		return ln.Addr().String(), nil
	}
	admin, err := NewClient(read("ca.crt"), read("admin.crt"), read("admin.key"), addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if st, err := admin.Status(ctx, "n1"); err != nil || st.Version != "v1" {
		t.Fatalf("status: %+v %v", st, err)
	}
	id, err := admin.Upgrade(ctx, "n1", netapi.UpgradeRequest{Image: "r/keel:v2", Preserve: true, DrainTimeoutS: 90})
	if err != nil || id != "u1" || len(node.got) != 1 || node.got[0].Image != "r/keel:v2" || node.got[0].DrainTimeoutS != 90 {
		t.Fatalf("upgrade: %q %v %+v", id, err, node.got)
	}
	node.busy = true
	_, err = admin.Upgrade(ctx, "n1", netapi.UpgradeRequest{Image: "r/keel:v2"})
	var ne *NodeError
	if !errors.Is(err, ErrNodeBusy) || !errors.As(err, &ne) || ne.Code != "conflict" {
		t.Fatalf("busy node: %v", err)
	}
	reader, err := NewClient(read("ca.crt"), read("reader.crt"), read("reader.key"), addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Upgrade(ctx, "n1", netapi.UpgradeRequest{Image: "r/keel:v2"}); !errors.As(err, &ne) || ne.Status != 403 {
		t.Fatalf("reader: %v", err)
	}
	if _, err := admin.Status(ctx, "gone"); err == nil {
		t.Fatal("a node that does not answer answered")
	}
}
