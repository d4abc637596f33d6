// Package keelsim simulates keel nodes at the API level, for the cluster controller's tests
// at a scale real nodes cannot reach here (1,000 nodes; a QEMU node needs a core and 1.5 GiB).
// It is a simulation, and says so: each node serves keel's real HTTP API (netapi's server,
// mTLS, roles, error codes) and its upgrades run through the real executor and state machine
// (upgrade.Executor, upgrade.Step), the real cordon, drain and uncordon against a real API
// server (cluster/kube), and the record is persisted and read back across reboots. What is
// simulated are the effects on a machine: the pull, the slot write and verify, the stop, GRUB
// (boot tries as grub.cfg spends them), the reboot (the endpoint does not answer, then a new
// boot id and a kubelet's Ready with it) and the trial's gates, each taking a scaled time, and
// failures injected by version.
package keelsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"keel/boot"
	"keel/cluster/kube"
	"keel/config"
	"keel/events"
	"keel/netapi"
	"keel/upgrade"
)

// Fault is an injected failure of a version's image.
type Fault string

// Faults.
const (
	FailGate Fault = "gate" // the new slot boots, its trial fails a health gate: rolled back
	FailPull Fault = "pull" // the image cannot be pulled: aborted, nothing changed
)

// Options are a simulated node's.
type Options struct {
	Name         string
	Version      string // what slot A holds at the start
	ControlPlane bool   // the status says so (no etcd member is simulated)
	// Step is how long each effect takes (pull, drain, stop, write, verify, trial), Reboot
	// how long the node does not answer while it reboots.
	Step, Reboot time.Duration
	// Faults by the version an image installs.
	Faults map[string]Fault
	// Kube is the client the simulated kubelet reports its Ready with; Kubeconfig the file
	// the node's real cordon/drain/uncordon use (cluster/kube).
	Kube       kubernetes.Interface
	Kubeconfig string
	// CA, Cert and Key are the endpoint's client CA and server key pair (PEM).
	CA, Cert, Key []byte
	Log           *slog.Logger
}

// Node is one simulated node.
type Node struct {
	o    Options
	addr string
	srv  *http.Server

	mu        sync.Mutex
	slots     map[boot.Slot]string // version per slot
	booted    boot.Slot
	committed boot.Slot
	next      boot.Slot
	tries     int
	bootID    string
	down      bool   // rebooting: the endpoint does not answer
	meta      []byte // the persisted record
	exec      *upgrade.Executor
	cancel    context.CancelFunc
	bus       *events.Bus    // this boot's events (GET /v1/events)
	stopped   bool           // Stop ran: no reboot boots again
	rebooting sync.WaitGroup // reboots in flight (Stop waits for them)
	boots     int
	upgrades  int               // requests accepted
	known     map[string]string // slot digest → version, of the images pulled
}

// Start boots the node from slot A and serves its endpoint on 127.0.0.1.
func Start(o Options) (*Node, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	n := &Node{o: o, slots: map[boot.Slot]string{boot.SlotA: o.Version}, booted: boot.SlotA, committed: boot.SlotA, known: map[string]string{}}
	cfg, err := netapi.TLSConfig(o.CA, o.Cert, o.Key)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n.addr = ln.Addr().String()
	api := netapi.New(netapi.Options{Node: apiNode{n: n}, Log: o.Log})
	n.srv, _ = netapi.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.isDown() {
			panic(http.ErrAbortHandler) // the connection drops, as a rebooting machine's would
		}
		api.ServeHTTP(w, r)
	}), cfg, o.Log)
	if err := n.boot(); err != nil {
		n.srv.Close()
		return nil, err
	}
	return n, nil
}

// Addr is the endpoint, host:port.
func (n *Node) Addr() string { return n.addr }

// Stop ends the node.
func (n *Node) Stop() {
	n.mu.Lock()
	n.stopped = true
	n.mu.Unlock()
	n.rebooting.Wait() // a reboot under way boots (or not) before the node is read below
	n.mu.Lock()
	e, cancel := n.exec, n.cancel
	n.mu.Unlock()
	if e != nil {
		e.Stop(5 * time.Second)
		cancel()
	}
	n.srv.Close()
}

// Facts are what happened on the node, for a test's invariants.
type Facts struct {
	Version  string
	Boots    int
	Upgrades int  // requests accepted
	Down     bool // rebooting
	Record   upgrade.Record
}

// Facts reads them.
func (n *Node) Facts() Facts {
	n.mu.Lock()
	defer n.mu.Unlock()
	f := Facts{Version: n.slots[n.booted], Boots: n.boots, Upgrades: n.upgrades, Down: n.down}
	if n.exec != nil {
		f.Record = n.exec.Record()
	}
	return f
}

func (n *Node) isDown() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.down
}

// boot is one boot: the record from META, a new boot id, a kubelet that reports the node
// Ready with it, and an executor told the slot it booted.
func (n *Node) boot() error {
	rec := upgrade.Record{}
	n.mu.Lock()
	if n.meta != nil {
		r, err := upgrade.Decode(n.meta)
		if err != nil {
			n.mu.Unlock()
			return fmt.Errorf("%s: META: %w", n.o.Name, err)
		}
		rec = r
	}
	b := make([]byte, 8)
	rand.Read(b)
	n.bootID = hex.EncodeToString(b)
	n.boots++
	booted, committed, bootID := n.booted, n.committed, n.bootID
	n.mu.Unlock()
	if err := n.kubeletReady(bootID); err != nil {
		return err
	}
	bus := events.New(256, nil)
	bus.Publish("boot", "init", "ready", map[string]any{"slot": string(booted), "boot_id": bootID})
	n.mu.Lock()
	n.bus = bus
	n.mu.Unlock()
	kc := &config.Kubernetes{NodeName: n.o.Name, DrainTimeoutS: 30}
	fx := effects{n}
	e := upgrade.NewExecutor(rec, upgrade.Options{
		Store: store{n},
		Effects: upgrade.Effects{Slots: fx, Boot: fx, Host: fx, Power: fx,
			Kube: kube.NewNode(kube.NodeOptions{Config: kc, Kubeconfig: n.o.Kubeconfig})},
		Log:      n.o.Log,
		RetryMin: 100 * time.Millisecond, RetryMax: time.Second,
		// The states as a node publishes them (sequence's upgradeChanged).
		OnChange: func(prev, cur upgrade.Record, ev upgrade.Event) {
			if u := cur.Current; u != nil && (prev.Current == nil || prev.Current.State != u.State || prev.Current.ID != u.ID) {
				bus.Publish("upgrade", u.ID, string(u.State), map[string]any{"reason": u.Reason, "image": u.Image, "to_version": u.ToVersion})
			}
			if _, ok := ev.(upgrade.Uncordoned); ok && cur.Current != nil {
				bus.Publish("upgrade", cur.Current.ID, "uncordoned", nil)
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	n.mu.Lock()
	n.exec, n.cancel, n.down = e, cancel, false
	n.mu.Unlock()
	go e.Run(ctx)
	bctx, bcancel := context.WithTimeout(ctx, 10*time.Second)
	defer bcancel()
	if err := e.Boot(bctx, upgrade.Booted{Slot: booted, Committed: committed}); err != nil {
		return fmt.Errorf("%s: boot: %w", n.o.Name, err)
	}
	e.Ready()
	return nil
}

// kubeletReady is the node's kubelet starting: Ready, with this boot's id.
func (n *Node) kubeletReady(bootID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		node, err := n.o.Kube.CoreV1().Nodes().Get(ctx, n.o.Name, metav1.GetOptions{})
		if err == nil {
			node.Status.NodeInfo.BootID = bootID
			node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
				Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
			if _, err = n.o.Kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err == nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: kubelet Ready: %w", n.o.Name, err)
		}
		time.Sleep(50 * time.Millisecond) // a conflict with a cordon: read it again
	}
}

// reboot goes down (the executor stops, the endpoint drops), lets GRUB pick the slot, and
// boots again after the reboot's time.
func (n *Node) reboot() {
	n.mu.Lock()
	e, cancel, bus := n.exec, n.cancel, n.bus
	n.down, n.exec = true, nil
	n.rebooting.Add(1)
	n.mu.Unlock()
	bus.Close() // followers' streams end, as at a node's shutdown
	go func() {
		defer n.rebooting.Done()
		e.Stop(5 * time.Second)
		cancel()
		time.Sleep(n.o.Reboot)
		n.mu.Lock()
		if n.stopped {
			n.mu.Unlock()
			return // the test is over: the machine stays off
		}
		// GRUB with boot tries: the slot under trial while tries remain (one spent first,
		// next_entry cleared before the last), else the committed slot.
		n.booted = n.committed
		if n.next != "" && n.tries > 0 {
			n.booted = n.next
			if n.tries--; n.tries == 0 {
				n.next = ""
			}
		}
		n.mu.Unlock()
		if err := n.boot(); err != nil {
			n.o.Log.Error("keelsim: boot", "node", n.o.Name, "err", err)
		}
	}()
}

type store struct{ n *Node }

func (s store) Write(p []byte) error {
	s.n.mu.Lock()
	s.n.meta = append([]byte(nil), p...)
	s.n.mu.Unlock()
	return nil
}
