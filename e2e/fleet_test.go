package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	etcdnode "keel/cluster/etcd"
	"keel/config"
	"keel/controller/api"
	"keel/controller/reconciler"
	"keel/internal/testenv"
	"keel/internal/testenv/vmtest"
	"keel/upgrade"
)

// TestFleet: a whole real cluster under one UpgradePlan. Three control-plane VMs (an etcd
// member each, mutual TLS, and a kubelet) and two worker VMs join the host's Kubernetes
// control plane; a Deployment with a PDB runs on them; keel-controller upgrades all five from
// v1 to v2: the control plane first, one at a time and alone, then the workers by the plan's
// concurrency, while a host prober's quorum reads see no failure and the Deployment keeps a
// ready replica. Sampled from the nodes' own records every second.
//
// Opt-in (KEEL_E2E_FLEET=1, `make test-fleet`): five TCG guests take about 15 minutes on 2
// cores, more than make test's budget has left.
func TestFleet(t *testing.T) {
	if os.Getenv("KEEL_E2E_FLEET") == "" {
		t.Skip("opt-in: KEEL_E2E_FLEET=1 (make test-fleet): five TCG guests for about 15 minutes")
	}
	c := newKubeCluster(t)
	const v1, v2 = "v1.0.0-fl", "v2.0.0-fl"
	target := c.reg.PushInstaller(t, "keel:"+v2, vmtest.InstallerOptions{Version: v2, Etcd: true, Kube: true})

	cps := make([]*cpNode, 3)
	var initial, endpoints, hostEndpoints []string
	for i := range cps {
		cps[i] = &cpNode{name: fmt.Sprintf("cp%d", i), cport: testenv.FreePort(), pport: testenv.FreePort()}
		initial = append(initial, fmt.Sprintf("%s=https://10.0.2.2:%d", cps[i].name, cps[i].pport))
		endpoints = append(endpoints, fmt.Sprintf("https://10.0.2.2:%d", cps[i].cport))
		hostEndpoints = append(hostEndpoints, fmt.Sprintf("https://127.0.0.1:%d", cps[i].cport))
	}
	type node struct {
		name string
		cp   bool
		vm   *vmtest.VM
	}
	var nodes []node
	for i, n := range cps {
		o := c.worker(t, n.name, fmt.Sprintf("10.244.%d.0/24", 10+i), v1)
		o.Etcd = true
		o.Config.Role = "control-plane"
		o.Config.Upgrade = config.Upgrade{TrialS: 600, WatchdogS: 300}
		o.Config.Etcd = &config.Etcd{
			ClientURL: fmt.Sprintf("https://10.0.2.2:%d", n.cport), PeerURL: fmt.Sprintf("https://10.0.2.2:%d", n.pport),
			InitialCluster: strings.Join(initial, ","), Endpoints: endpoints,
			// As TestControlPlaneRollingUpgrade's, for five guests on two cores.
			LeaseTTLS: 300, CheckWaitS: 120, HeartbeatMS: 300, ElectionMS: 3000,
		}
		n.vm = vmtest.New(t, image(t, o))
		n.vm.Memory = kubeGuestMemory
		n.vm.Forward = map[int]int{n.cport: 2379, n.pport: 2380}
		dumpKubeLogs(t, n.vm)
		nodes = append(nodes, node{n.name, true, n.vm})
	}
	for i := 1; i <= 2; i++ {
		name := fmt.Sprintf("worker-%d", i)
		o := c.worker(t, name, fmt.Sprintf("10.244.%d.0/24", i), v1)
		o.Config.Upgrade = config.Upgrade{TrialS: 600, WatchdogS: 300}
		vm := vmtest.New(t, image(t, o))
		vm.Memory = kubeGuestMemory
		// Five emulated guests share two cores, where a real cluster gives each node its own:
		// the control plane's guests get the CPU first, so that emulation starving an etcd
		// member does not pose as the rollout costing quorum reads. The workers are slower.
		vm.Nice = 10
		dumpKubeLogs(t, vm)
		nodes = append(nodes, node{name, false, vm})
	}
	t.Cleanup(func() { // what each node's init said, if the test failed (before the VMs stop: registered after them)
		if !t.Failed() {
			return
		}
		for _, n := range nodes {
			if code, b, err := n.vm.Call("reader", "GET", "/v1/logs/init?tail=80", nil); err == nil {
				t.Logf("%s init log (%d):\n%s", n.name, code, b)
			}
		}
	})
	t0 := time.Now()
	for _, n := range nodes {
		n.vm.Start()
	}
	for _, n := range nodes {
		n.vm.WaitReady(10 * time.Minute)
	}
	for _, n := range nodes {
		c.nodeReady(t, n.name, 15*time.Minute)
	}
	t.Logf("five guests: QEMU start → every Node Ready %.0f s", time.Since(t0).Seconds())
	cli, err := etcdnode.Connect(hostEndpoints, cps[0].vm.EtcdTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitMembers(t, cli, 3, 5*time.Minute)

	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(hook.Close)
	c.webDeployment(t, hook.Listener.Addr().(*net.TCPAddr).Port)
	c.podsRunning(t, "app=web", 2, 10*time.Minute)
	minReady := c.watchReadyReplicas(t, "web")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &prober{}
	go p.run(ctx, cli)

	// Who is out of service, from each node's own record (one that does not answer is as it
	// last said: rebooting for its upgrade, or slow to answer while in service); the first
	// instant each was.
	var mu sync.Mutex
	firstOut := map[string]time.Time{}
	wasOut := map[string]bool{}
	maxCP, maxW, beside := 0, 0, 0
	sctx, scancel := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sctx.Err() == nil {
			cp, w := 0, 0
			now := time.Now()
			for _, n := range nodes {
				if st, ok := n.vm.TryStatus(); ok {
					wasOut[n.name] = st.Upgrade.OutOfService()
				}
				if !wasOut[n.name] {
					continue
				}
				if n.cp {
					cp++
				} else {
					w++
				}
				mu.Lock()
				if firstOut[n.name].IsZero() {
					firstOut[n.name] = now
				}
				mu.Unlock()
			}
			mu.Lock()
			maxCP, maxW = max(maxCP, cp), max(maxW, w)
			if cp > 0 && w > 0 {
				beside++
			}
			mu.Unlock()
			select {
			case <-sctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()

	for _, n := range nodes {
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"127.0.0.1:%d"}}}`, reconciler.AnnotationEndpoint, n.vm.Port)
		if _, err := c.cs.CoreV1().Nodes().Patch(ctx, n.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	plan := &api.UpgradePlan{ObjectMeta: metav1.ObjectMeta{Name: "fleet"}, Spec: api.UpgradePlanSpec{Image: target, Concurrency: 1, DrainTimeoutSeconds: 300}}
	_, wait := c.startPlan(t, nodes[0].vm.PKIDir(), plan)
	tPlan := time.Now()
	end := wait("an end", 60*time.Minute, func(s api.UpgradePlanStatus) bool {
		return s.Phase == "Done" || s.Phase == "Halted" || s.Phase == "Invalid"
	})
	rollout := time.Since(tPlan)
	scancel()
	<-sampled
	if end.Phase != "Done" || end.Done != 5 {
		t.Fatalf("plan ended %s %d/%d: %s", end.Phase, end.Done, end.Total, end.Message)
	}
	for _, n := range nodes {
		st := n.vm.Status()
		if st.Version != v2 || st.Upgrade == nil || st.Upgrade.State != upgrade.Done {
			t.Errorf("%s: %s, record %+v", n.name, st.Version, st.Upgrade)
			continue
		}
		u := st.Upgrade
		t.Logf("%s: requested %s, done %s (%.0f s)", n.name, u.RequestedAt.Format(time.TimeOnly), u.FinishedAt.Format(time.TimeOnly), u.FinishedAt.Sub(u.RequestedAt).Seconds())
	}
	mu.Lock()
	lastCP := time.Time{}
	for _, n := range nodes {
		if n.cp && firstOut[n.name].After(lastCP) {
			lastCP = firstOut[n.name]
		}
	}
	for _, n := range nodes {
		if !n.cp && !firstOut[n.name].After(lastCP) {
			t.Errorf("%s out of service at %s, before the last control-plane node (%s)", n.name, firstOut[n.name].Format(time.TimeOnly), lastCP.Format(time.TimeOnly))
		}
	}
	if maxCP > 1 || maxW > 1 || beside > 0 {
		t.Errorf("out of service at once: %d control-plane nodes, %d workers; %d samples with both", maxCP, maxW, beside)
	}
	mu.Unlock()
	waitMembers(t, cli, 3, 5*time.Minute)
	cancel()
	t.Logf("rollout of 5 nodes: %.0f s; at most %d control-plane node and %d worker out of service at once, never both", rollout.Seconds(), maxCP, maxW)
	t.Logf("prober through the rollout: %s", p.summary())
	p.check(t, "the fleet's rollout")
	if m := minReady(); m < 1 {
		t.Errorf("the web Deployment had %d ready replicas at some point (want always ≥ 1)", m)
	}
}
