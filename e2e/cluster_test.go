package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	etcdnode "keel/cluster/etcd"
	"keel/config"
	"keel/internal/testenv"
	"keel/internal/testenv/vmtest"
	"keel/netapi"
	"keel/supervisor"
	"keel/upgrade"
)

// cpNode is one control-plane VM with its etcd member's host ports.
type cpNode struct {
	name         string
	vm           *vmtest.VM
	cport, pport int
}

// TestControlPlaneRollingUpgrade: three control-plane VMs, each running an etcd member with
// mutual TLS, peered through the host's loopback (hostfwd + 10.0.2.2). An upgrade requested on
// all three at the same instant runs one node at a time under the upgrade lease, all end on the
// new version, each saved a snapshot and the leader handed its leadership over before its
// member stopped; a host prober's quorum reads every 200 ms see no failure and none over 1 s.
// Then cp1, made the leader, upgrades with preserve=false: it hands over, leaves, rejoins as a
// learner, is promoted, and the member list is whole again, with the prober still unaffected.
// cp0's snapshot, downloaded through the endpoint, restores with etcdutl. Not parallel: three
// TCG guests already share the two cores.
func TestControlPlaneRollingUpgrade(t *testing.T) {
	reg := vmtest.NewRegistry(t)
	v2 := reg.PushInstaller(t, "keel:v2.0.0-cp", vmtest.InstallerOptions{Version: "v2.0.0-cp", Etcd: true})
	v3 := reg.PushInstaller(t, "keel:v3.0.0-cp", vmtest.InstallerOptions{Version: "v3.0.0-cp", Etcd: true})

	nodes := make([]*cpNode, 3)
	var initial, endpoints, hostEndpoints []string
	for i := range nodes {
		nodes[i] = &cpNode{name: fmt.Sprintf("cp%d", i), cport: testenv.FreePort(), pport: testenv.FreePort()}
		initial = append(initial, fmt.Sprintf("%s=https://10.0.2.2:%d", nodes[i].name, nodes[i].pport))
		endpoints = append(endpoints, fmt.Sprintf("https://10.0.2.2:%d", nodes[i].cport))
		hostEndpoints = append(hostEndpoints, fmt.Sprintf("https://127.0.0.1:%d", nodes[i].cport))
	}
	for _, n := range nodes {
		cfg := config.Config{Hostname: n.name, Role: "control-plane",
			Upgrade: config.Upgrade{TrialS: 300, WatchdogS: 120},
			Etcd: &config.Etcd{
				ClientURL: fmt.Sprintf("https://10.0.2.2:%d", n.cport), PeerURL: fmt.Sprintf("https://10.0.2.2:%d", n.pport),
				InitialCluster: strings.Join(initial, ","), Endpoints: endpoints,
				// Long enough to outlast a reboot of a TCG guest sharing two cores with two others.
				LeaseTTLS: 180,
				// A node that holds the lock waits this long for the cluster to spare its member.
				CheckWaitS: 30,
				// etcd's defaults (100/1000 ms) assume real CPUs; three emulated guests on two
				// cores miss heartbeats and hold needless elections.
				HeartbeatMS: 300, ElectionMS: 3000,
			}}
		n.vm = vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-cp", Etcd: true, Config: cfg}))
		n.vm.Forward = map[int]int{n.cport: 2379, n.pport: 2380}
	}
	for _, n := range nodes {
		n.vm.Start()
	}
	for _, n := range nodes {
		n.vm.WaitReady(bootTimeout)
	}

	cli, err := etcdnode.Connect(hostEndpoints, nodes[0].vm.EtcdTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waitMembers(t, cli, 3, 2*time.Minute)
	// The service's health check is a quorum read through the member itself.
	for _, n := range nodes {
		waitService(t, n.vm, "etcd", 60*time.Second)
	}

	refusedAndCancelled(t, ctx, cli, nodes, v3)
	if _, err := cli.Put(ctx, "/e2e/marker", "before the upgrades"); err != nil {
		t.Fatal(err)
	}

	// The power goes while cp0 writes its slot: its member stopped after its snapshot and
	// hand-over, so the cut and its reboot must not show in the reads either.
	pc := &prober{}
	pctx, pcancel := context.WithCancel(ctx)
	go pc.run(pctx, cli)
	powerCutHolding(t, cli, nodes[0].vm, v2)
	pcancel()
	t.Logf("prober through the power cut: %s", pc.summary())
	pc.check(t, "the power cut and its reboot")

	p := &prober{}
	go p.run(ctx, cli)
	lw := &lockWatch{}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go lw.run(wctx, cli)

	if code, b, _ := nodes[0].vm.Call("admin", "POST", "/v1/upgrade/cancel", nil); code != http.StatusConflict {
		t.Errorf("cancel with nothing in flight: %d %s, want 409", code, b)
	}
	t0 := time.Now()
	ids := make([]string, 3)
	answers := make([]netapi.UpgradeAccepted, 3)
	var wg sync.WaitGroup
	var refused atomic.Bool
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, b, err := n.vm.Call("admin", "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: v2, Preserve: true})
			if err != nil || code != http.StatusAccepted || json.Unmarshal(b, &answers[i]) != nil {
				t.Errorf("%s: upgrade: %d %v %s", n.name, code, err, b)
				refused.Store(true)
				return
			}
			ids[i] = answers[i].ID
		}()
	}
	wg.Wait()
	if refused.Load() {
		t.FailNow()
	}
	for i, a := range answers {
		t.Logf("%s accepted: %s", nodes[i].name, a.Etcd)
	}
	waited := waitAll(t, nodes, ids, "v2.0.0-cp", 25*time.Minute)
	total := time.Since(t0)
	wcancel()
	// One at a time: the host saw holds and releases alternate, each node once.
	lw.mu.Lock()
	evs := append([]lockEvent(nil), lw.events...)
	lw.mu.Unlock()
	var seq []string
	var handovers []time.Duration
	holders := map[string]bool{}
	for i, e := range evs {
		seq = append(seq, e.kind+" "+e.node)
		if e.kind == "holds" {
			holders[e.node] = true
			if i > 0 && evs[i-1].kind == "released" {
				handovers = append(handovers, e.at.Sub(evs[i-1].at))
			}
		}
		if i > 0 && e.kind == evs[i-1].kind {
			t.Errorf("lock events do not alternate: %v", seq)
		}
	}
	if len(holders) != 3 || len(evs) != 6 {
		t.Errorf("lock events %v, want each of the three nodes to hold then release it once", seq)
	}
	if len(waited) == 0 {
		t.Error("no node ever said it was waiting for the upgrade lease")
	}
	t.Logf("waiting as reported by status: %v", waited)
	t.Logf("lock sequence: %v", seq)
	t.Logf("rolling upgrade of 3 nodes: %v from the requests to the last release; lease hand-overs (release → next holder starts, seen by a host watch): %v",
		total.Round(time.Second), handovers)
	checkMembers(t, cli, nodes, 3)
	handedOver := 0
	for i, n := range nodes {
		u := waitReleased(t, n.vm, ids[i], time.Minute)
		t.Logf("%s etcd: %s", n.name, u.Etcd)
		if !strings.Contains(u.Etcd, "snapshot /state/etcd-snapshots/etcd-"+n.name) {
			t.Errorf("%s saved no snapshot before its member stopped: %q", n.name, u.Etcd)
		}
		if strings.Contains(u.Etcd, "leadership handed over to") {
			handedOver++
		}
	}
	// Leadership changes only by hand-over (pre-vote keeps a restarted follower from calling
	// an election): whoever led at the start led when its turn came.
	if handedOver == 0 {
		t.Error("no node handed leadership over during the rolling upgrade")
	}
	p1 := p.summary()
	t.Logf("prober through the rolling upgrade: %s", p1)
	p.check(t, "the rolling upgrade")

	// preserve=false on cp1, made the leader first: the leave the issue saw fail.
	n := nodes[1]
	moveLeader(t, ctx, cli, nodes, n)
	p = &prober{}
	go p.run(ctx, cli)
	before := memberIDs(t, cli)
	t1 := time.Now()
	id := n.vm.Upgrade(v3, false)
	st := n.vm.WaitUpgrade(id, 10*time.Minute)
	if st.Upgrade.State != upgrade.Done || st.Version != "v3.0.0-cp" {
		t.Fatalf("preserve=false upgrade: %+v", st.Upgrade)
	}
	u := waitReleased(t, n.vm, id, 5*time.Minute)
	t.Logf("%s preserve=false: %v; etcd: %s", n.name, time.Since(t1).Round(time.Second), u.Etcd)
	if !strings.Contains(u.Etcd, "leadership handed over to") || !strings.Contains(u.Etcd, "left the cluster") || !strings.Contains(u.Etcd, "promoted") {
		t.Errorf("etcd record %q, want the hand-over, the leave and the promotion", u.Etcd)
	}
	after := checkMembers(t, cli, nodes, 3)
	if before[n.name] == after[n.name] {
		t.Errorf("%s kept member id %x: it did not leave and rejoin", n.name, before[n.name])
	}
	cancel()
	t.Logf("prober through the preserve=false leave and rejoin: %s", p.summary())
	p.check(t, "the preserve=false leave and rejoin")
	restoreFromNode(t, nodes[0])
}

// refusedAndCancelled: with one VM frozen (QMP stop: its member stops answering, as a hung
// machine), an upgrade of another node is refused with the numbers and nothing changes. With
// the upgrade lock held by someone else (the host), a request is accepted and waits, saying for
// whom; cancelling it ends it and releases its lease.
func refusedAndCancelled(t *testing.T, ctx context.Context, cli *clientv3.Client, nodes []*cpNode, image string) {
	t.Helper()
	nodes[2].vm.QMP("stop", nil)
	code, b, _ := nodes[0].vm.Call("admin", "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: image, Preserve: true})
	nodes[2].vm.QMP("cont", nil)
	if code != http.StatusPreconditionFailed || !strings.Contains(string(b), "restarting cp0 leaves 1 of 3 voters healthy, quorum 2; unhealthy voters: cp2") {
		t.Errorf("upgrade with cp2 frozen: %d %s, want 412 naming cp2 and the numbers", code, b)
	}
	if st := nodes[0].vm.Status(); st.Upgrade != nil {
		t.Errorf("a refused upgrade left a record: %+v", st.Upgrade)
	}
	t.Logf("refused with cp2 frozen: %d %s", code, b)
	waitMembers(t, cli, 3, 2*time.Minute)

	hid, err := etcdnode.Grant(ctx, cli, 60)
	if err != nil {
		t.Fatal(err)
	}
	hl, err := etcdnode.Acquire(ctx, cli, hid, etcdnode.Holder{Node: "e2e-host"}, func(etcdnode.Holder) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Release(context.Background())
	vm := nodes[2].vm
	code, b, _ = vm.Call("admin", "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: image, Preserve: true})
	var acc netapi.UpgradeAccepted
	if code != http.StatusAccepted || json.Unmarshal(b, &acc) != nil || !strings.Contains(acc.Etcd, "held by e2e-host") {
		t.Fatalf("upgrade while the host holds the lock: %d %s, want 202 saying it waits", code, b)
	}
	deadline := time.Now().Add(2 * time.Minute)
	var u *upgrade.Upgrade
	for time.Now().Before(deadline) {
		if st, ok := vm.TryStatus(); ok && st.Upgrade != nil && strings.Contains(st.Upgrade.Lock, "waiting for the upgrade lease, held by e2e-host since") {
			u = st.Upgrade
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if u == nil || u.Lease == 0 {
		t.Fatalf("cp2 never said it waited for the host's lock: %+v", vm.Status().Upgrade)
	}
	if code, b, _ := vm.Call("admin", "POST", "/v1/upgrade/cancel", nil); code != http.StatusOK {
		t.Fatalf("cancel while waiting: %d %s", code, b)
	}
	if code, b, _ := vm.Call("reader", "GET", "/v1/events?tail=200", nil); code != http.StatusOK ||
		!strings.Contains(string(b), "waiting for the upgrade lease, held by e2e-host since") {
		t.Errorf("events of the waiting node: %d, no \"waiting for the upgrade lease, held by e2e-host\":\n%s", code, b)
	}
	st := waitReleased(t, vm, acc.ID, time.Minute)
	if st.State != upgrade.Aborted || st.Reason != "cancelled: by operator" || vm.Status().Version != "v1.0.0-cp" {
		t.Errorf("after cancel: %+v", st)
	}
	resp, err := cli.Get(ctx, etcdnode.LockPrefix+"/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != hid {
		t.Errorf("lock keys after the cancel: %v %v, want only the host's", resp, err)
	}
	if code, _, _ := vm.Call("admin", "POST", "/v1/upgrade/cancel", nil); code != http.StatusConflict {
		t.Errorf("second cancel: %d, want 409", code)
	}
	t.Logf("cancelled while waiting: %s; lease %x released", st.Lock, u.Lease)

	// cp0 waits behind the host too; cp2 freezes; the host lets go. cp0 holds the lock but the
	// cluster cannot spare its member: it re-checks until check_wait_s runs out, then aborts,
	// naming cp2, and releases the lock. Nothing was stopped.
	vm = nodes[0].vm
	waitFor := vm.Upgrade(image, true)
	deadline = time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if st, ok := vm.TryStatus(); ok && st.Upgrade != nil && strings.Contains(st.Upgrade.Lock, "held by e2e-host") {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	nodes[2].vm.QMP("stop", nil)
	if err := hl.Release(ctx); err != nil {
		t.Fatal(err)
	}
	u2 := waitReleased(t, vm, waitFor, 3*time.Minute)
	nodes[2].vm.QMP("cont", nil)
	if u2.State != upgrade.Aborted || !strings.Contains(u2.Reason, "restarting cp0 leaves 1 of 3 voters healthy, quorum 2; unhealthy voters: cp2") ||
		!strings.Contains(u2.Reason, "gave up") || vm.Status().Version != "v1.0.0-cp" {
		t.Errorf("check with cp2 frozen after taking the lock: %+v", u2)
	}
	if resp, err := cli.Get(ctx, etcdnode.LockPrefix+"/", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("lock keys after the given-up check: %v %v, want none", resp, err)
	}
	t.Logf("refused after taking the lock: %s (%v from request to release)", u2.Reason, u2.FinishedAt.Sub(u2.RequestedAt).Round(time.Second))
	waitMembers(t, cli, 3, 2*time.Minute)
}

// powerCutHolding: the power goes (QMP system_reset) while a node holds the upgrade lock with
// its member stopped. It boots its old slot, ends aborted with the reason, its member rejoins
// the quorum with its data, and only then is the lease (persisted on META) released.
func powerCutHolding(t *testing.T, cli *clientv3.Client, vm *vmtest.VM, image string) {
	t.Helper()
	id := vm.Upgrade(image, true)
	vm.Expect(`keel-upgrade id=`+id+` state=writing`, upgradeTimeout)
	vm.Reset()
	st := vm.WaitUpgrade(id, upgradeTimeout)
	u := waitReleased(t, vm, id, 3*time.Minute)
	if st.Upgrade.State != upgrade.Aborted || !strings.Contains(u.Reason, "interrupted by a reboot") || st.Version != "v1.0.0-cp" {
		t.Fatalf("power cut while holding the lock: %+v", u)
	}
	vm.Expect(`keel-lease released id=`+id, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if resp, err := cli.Get(ctx, etcdnode.LockPrefix+"/", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("lock keys after the cut node's release: %v %v, want none", resp, err)
	}
	waitMembers(t, cli, 3, time.Minute)
	t.Logf("power cut while holding the lock: %s; %s", u.Reason, u.Lock)
}

// waitAll waits until every node's upgrade is done on version and its lease released,
// collecting what status said while nodes waited for the lease.
func waitAll(t *testing.T, nodes []*cpNode, ids []string, version string, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	seen := map[string]bool{}
	var waited []string
	last := map[string]string{}
	for time.Now().Before(deadline) {
		done := 0
		for i, n := range nodes {
			st, ok := n.vm.TryStatus()
			if !ok || st.Upgrade == nil || st.Upgrade.ID != ids[i] {
				continue
			}
			u := st.Upgrade
			if s := string(u.State) + " " + u.Lock; s != last[n.name] {
				t.Logf("%s: %s; lock: %s", n.name, u.State, u.Lock)
				last[n.name] = s
			}
			if strings.HasPrefix(u.Lock, "waiting for the upgrade lease, held by cp") && !seen[n.name+u.Lock] {
				seen[n.name+u.Lock] = true
				waited = append(waited, n.name+": "+u.Lock)
			}
			if u.State.Terminal() && u.State != upgrade.Done {
				t.Fatalf("%s: upgrade ended %s: %s", n.name, u.State, u.Reason)
			}
			if u.State == upgrade.Done && u.Lease == 0 && st.Version == version {
				done++
			}
		}
		if done == len(nodes) {
			return waited
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("rolling upgrade not finished within %v; last %v", timeout, last)
	return nil
}

func waitReleased(t *testing.T, vm *vmtest.VM, id string, timeout time.Duration) upgrade.Upgrade {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if st, ok := vm.TryStatus(); ok && st.Upgrade != nil && st.Upgrade.ID == id && st.Upgrade.Lease == 0 && st.Upgrade.State.Terminal() {
			return *st.Upgrade
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("upgrade %s did not release its lease within %v", id, timeout)
	return upgrade.Upgrade{}
}

func waitMembers(t *testing.T, cli *clientv3.Client, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ms, err := etcdnode.Probe(ctx, cli, 3*time.Second)
		cancel()
		healthy := 0
		for _, m := range ms {
			if !m.Learner && m.ClientURLs != nil {
				healthy++
			}
		}
		last = fmt.Sprintf("%+v %v", ms, err)
		if err == nil && healthy == n && len(ms) == n {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("etcd cluster of %d not formed within %v: %s", n, timeout, last)
}

// checkMembers asserts n voting members named after the nodes, and returns their ids.
func checkMembers(t *testing.T, cli *clientv3.Client, nodes []*cpNode, n int) map[string]uint64 {
	t.Helper()
	ids := memberIDs(t, cli)
	if len(ids) != n {
		t.Errorf("members %v, want %d voters", ids, n)
	}
	for _, nd := range nodes {
		if _, ok := ids[nd.name]; !ok {
			t.Errorf("member %s missing: %v", nd.name, ids)
		}
	}
	return ids
}

func memberIDs(t *testing.T, cli *clientv3.Client) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ms, err := etcdnode.List(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint64{}
	for _, m := range ms {
		if m.Learner {
			t.Errorf("member %s is still a learner", m.Name)
		}
		ids[m.Name] = m.ID
	}
	return ids
}

func waitService(t *testing.T, vm *vmtest.VM, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		code, b, err := vm.Call("reader", "GET", "/v1/services", nil)
		last = fmt.Sprintf("%d %v %s", code, err, b)
		var resp struct {
			Services []supervisor.Status `json:"services"`
		}
		if err == nil && code == http.StatusOK && json.Unmarshal(b, &resp) == nil {
			for _, s := range resp.Services {
				if s.Name == name && s.State == supervisor.Healthy {
					return
				}
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("service %s not healthy within %v: %s", name, timeout, last)
}

// TestControlPlaneSingleMember: a one-member cluster may upgrade with preserve=true, and the
// answer says the cluster is unavailable meanwhile; preserve=false is refused (the cluster would
// end). Its lease survives its own member's restart: etcd renews leases when a leader is
// elected, and the node resumes the keep-alive with the same id.
func TestControlPlaneSingleMember(t *testing.T) {
	t.Parallel()
	reg := vmtest.NewRegistry(t)
	v2 := reg.PushInstaller(t, "keel:v2.0.0-cp", vmtest.InstallerOptions{Version: "v2.0.0-cp", Etcd: true})
	cport, pport := testenv.FreePort(), testenv.FreePort()
	cfg := config.Config{Hostname: "solo", Role: "control-plane",
		Etcd: &config.Etcd{
			ClientURL: fmt.Sprintf("https://10.0.2.2:%d", cport), PeerURL: fmt.Sprintf("https://10.0.2.2:%d", pport),
			InitialCluster: fmt.Sprintf("solo=https://10.0.2.2:%d", pport), Endpoints: []string{fmt.Sprintf("https://10.0.2.2:%d", cport)},
			LeaseTTLS: 180,
		}}
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-cp", Etcd: true, Config: cfg}))
	vm.Forward = map[int]int{cport: 2379, pport: 2380}
	vm.Start()
	vm.WaitReady(bootTimeout)
	waitService(t, vm, "etcd", 60*time.Second)

	code, b, _ := vm.Call("admin", "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: v2, Preserve: false})
	if code != http.StatusPreconditionFailed || !strings.Contains(string(b), "solo is the only voter: removing it would end the cluster") {
		t.Fatalf("preserve=false on a single member: %d %s, want 412", code, b)
	}
	code, b, _ = vm.Call("admin", "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: v2, Preserve: true})
	var acc netapi.UpgradeAccepted
	if code != http.StatusAccepted || json.Unmarshal(b, &acc) != nil || !acc.Outage || !strings.Contains(acc.Etcd, "unavailable until it is back") {
		t.Fatalf("preserve=true on a single member: %d %s, want 202 stating the outage", code, b)
	}
	st := vm.WaitUpgrade(acc.ID, upgradeTimeout)
	u := waitReleased(t, vm, acc.ID, 3*time.Minute)
	if st.Upgrade.State != upgrade.Done || st.Version != "v2.0.0-cp" || u.Warning != "" {
		t.Fatalf("single-member upgrade: %+v (warning %q)", st.Upgrade, u.Warning)
	}
	cli, err := etcdnode.Connect([]string{fmt.Sprintf("https://127.0.0.1:%d", cport)}, vm.EtcdTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := etcdnode.WaitHealthy(ctx, fmt.Sprintf("https://127.0.0.1:%d", cport), vm.EtcdTLS()); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, etcdnode.LockPrefix+"/", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("lock keys after the upgrade: %v %v, want none", resp, err)
	}
	t.Logf("single member: %s; lock %s", acc.Etcd, u.Lock)
}
