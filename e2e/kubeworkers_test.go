package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"keel/boot"
	"keel/cluster/kube"
	"keel/internal/testenv/vmtest"
	"keel/netapi"
	"keel/upgrade"
)

// TestKubernetesWorkers: two keel workers join the host's control plane (real API server,
// controller-manager and scheduler) and turn Ready; a DaemonSet and a Deployment (2 replicas
// spread over both, a PDB maxUnavailable=1, a preStop hook that reports here) run on them from
// the host registry. Then, with the Deployment's ready replicas watched all along:
//   - worker-1 upgrades: cordoned, its web pod evicted through the kubelet (the preStop
//     report arrives), the replacement runs on worker-2, the DaemonSet pod — which ignores
//     SIGTERM and holds a file open on a hostPath — is killed and its mounts released, the
//     node reboots into the new slot, is Ready as this boot's kubelet reports it before the
//     commit, is uncordoned and runs its DaemonSet pod again;
//   - a budget that allows no disruption aborts an upgrade in its drain;
//   - keel-controller drives both under a plan (controllerRollout): a target whose kubelet
//     cannot register halts the plan at worker-1, rolled back by its Ready gate and back in
//     service; the fixed target, staged and with preserve=false, finishes on both: EPHEMERAL
//     is wiped, each kubelet registers again and pulls its images anew.
func TestKubernetesWorkers(t *testing.T) {
	t.Parallel()
	c := newKubeCluster(t)
	v2 := c.reg.PushInstaller(t, "keel:v2.0.0-kw", vmtest.InstallerOptions{Version: "v2.0.0-kw", Kube: true})

	var vms [2]*vmtest.VM
	t0 := time.Now()
	for i := range vms {
		name := fmt.Sprintf("worker-%d", i+1)
		o := c.worker(t, name, fmt.Sprintf("10.244.%d.0/24", i+1), "v1.0.0-kw")
		o.Config.Kubernetes.ReadyTimeoutS = 90
		vms[i] = vmtest.New(t, image(t, o))
		vms[i].Memory = kubeGuestMemory
		dumpKubeLogs(t, vms[i])
		vms[i].Start()
	}
	for i, vm := range vms {
		vm.WaitReady(bootTimeout)
		ready := c.nodeReady(t, fmt.Sprintf("worker-%d", i+1), 5*time.Minute)
		t.Logf("worker-%d: QEMU start → Node Ready %.1f s (both booting at once)", i+1, ready.Sub(t0).Seconds())
	}

	// The floor's reboot: worker-2 reboots through its endpoint, no workload yet; how long
	// until this boot's kubelet reports it Ready.
	oldBoot := vms[1].Status().BootID
	tReboot := time.Now()
	if code, b, err := vms[1].Call("operator", "POST", "/v1/reboot", nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("reboot: %d %v %s", code, err, b)
	}
	rebootToReady := c.readyAfterBoot(t, vms[1], "worker-2", oldBoot, 5*time.Minute).Sub(tReboot)
	t.Logf("floor: reboot → Node Ready %.1f s", rebootToReady.Seconds())

	var preStop atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { preStop.Add(1) }))
	t.Cleanup(hook.Close)
	c.agentDaemonSet(t)
	c.webDeployment(t, hook.Listener.Addr().(*net.TCPAddr).Port)
	c.podsRunning(t, "app=agent", 2, 4*time.Minute)
	c.podsRunning(t, "app=web", 2, 4*time.Minute)
	if on := c.podNodes(t, "app=web"); on["worker-1"] != 1 || on["worker-2"] != 1 {
		t.Fatalf("web pods not spread: %v", on)
	}
	minReady := c.watchReadyReplicas(t, "web")

	// 1. worker-1, preserve=true.
	w1 := vms[0]
	var sawOnW2 atomic.Bool
	var cordoned time.Time
	tUp := time.Now()
	st, seen := waitUpgradeTimed(t, w1, w1.Upgrade(v2, true), 12*time.Minute, func() {
		if n, err := c.cs.CoreV1().Nodes().Get(context.Background(), "worker-1", metav1.GetOptions{}); err == nil && n.Spec.Unschedulable && cordoned.IsZero() {
			cordoned = time.Now()
		}
		// While worker-1 is away, its web pod's replacement runs on worker-2.
		if on := c.podNodes(t, "app=web"); on["worker-2"] == 2 {
			sawOnW2.Store(true)
		}
	})
	mustState(t, st, upgrade.Done, "v2.0.0-kw", boot.SlotB)
	if preStop.Load() == 0 {
		t.Error("the evicted web pod's preStop hook never reported")
	}
	if !sawOnW2.Load() {
		t.Error("the evicted web pod's replacement never ran on worker-2")
	}
	c.readyGateBeforeCommit(t, w1)
	if !strings.Contains(st.Upgrade.Kubernetes, "Ready as reported by this boot's kubelet") {
		t.Errorf("the record does not say the node was Ready before the commit: %q", st.Upgrade.Kubernetes)
	}
	uncordoned := c.uncordoned(t, "worker-1", time.Minute)
	drain := seen[upgrade.Stopping].Sub(seen[upgrade.Draining])
	out := uncordoned.Sub(cordoned)
	t.Logf("worker-1 upgrade: request → done %.1f s; out of service (cordon → uncordon) %.1f s; floor (drain %.1f s + reboot → Ready %.1f s) %.1f s: %.2f× the floor",
		st.Upgrade.FinishedAt.Sub(st.Upgrade.RequestedAt).Seconds(), out.Seconds(), drain.Seconds(), rebootToReady.Seconds(),
		(drain + rebootToReady).Seconds(), out.Seconds()/(drain+rebootToReady).Seconds())
	c.podsRunning(t, "app=agent", 2, 3*time.Minute)
	c.pulledAfter(t, "worker-1", tUp, "already present") // preserve=true kept the image store

	// (A slot whose kubelet never registers, rolled back by the Ready gate, is step 3's first
	// plan, and preserve=false its second: one such trial each is enough, every upgrade of a
	// worker takes minutes under TCG beside the other tests' guests.)

	// 2. A budget that allows no disruption (computed by the real disruption controller)
	// blocks the drain: the upgrade aborts before anything destructive, names the budget,
	// uncordons the node, and the node does not reboot.
	c.guardedDeployment(t, "db")
	c.podsRunning(t, "app=db", 1, 3*time.Minute)
	c.budgetBlocks(t, "db", 2*time.Minute)
	idx := 0
	if c.podNodes(t, "app=db")["worker-2"] == 1 {
		idx = 1
	}
	vm := vms[idx]
	bootID := vm.Status().BootID
	// v2 is worker-1's version (a reinstall passes the version policy) and newer than
	// worker-2's: either way the budget is what stops it.
	code, b, err := vm.Call("admin", "POST", "/v1/upgrade", map[string]any{"image": v2, "preserve": true, "drain_timeout_s": 10})
	if err != nil || code != http.StatusAccepted {
		t.Fatalf("upgrade: %d %v %s", code, err, b)
	}
	st, _ = waitUpgradeTimed(t, vm, vm.Status().Upgrade.ID, 5*time.Minute, nil)
	if st.Upgrade.State != upgrade.Aborted || !strings.Contains(st.Upgrade.Reason, "PodDisruptionBudget default/db") {
		t.Errorf("upgrade blocked by a budget: %s %q, want aborted naming default/db", st.Upgrade.State, st.Upgrade.Reason)
	}
	if d := st.Drain; d == nil || d.PodsLeft != 1 {
		t.Errorf("status drain = %+v, want 1 pod left (the db pod)", d)
	}
	c.uncordoned(t, fmt.Sprintf("worker-%d", idx+1), time.Minute)
	if st := vm.Status(); st.BootID != bootID {
		t.Error("the node rebooted for an upgrade aborted in the drain")
	}

	// 3. keel-controller drives both workers under an UpgradePlan.
	c.controllerRollout(t, vms)

	for i, vm := range vms {
		t.Logf("worker-%d memory: %s", i+1, memInUse(vm.Status()))
	}
	if m := minReady(); m < 1 {
		t.Errorf("the web Deployment had %d ready replicas at some point (want always ≥ 1)", m)
	} else {
		t.Logf("web Deployment: at least %d ready replica(s) all along", m)
	}
}

// kubeGuestMemory is what a worker guest gets: the kubelet, containerd and a few pods fit
// with room for the page cache (see the README for what was measured).
const kubeGuestMemory = "1536M"

// waitUpgradeTimed waits for the upgrade's terminal state, noting when each state was first
// seen; each poll also calls during (if set).
func waitUpgradeTimed(t *testing.T, vm *vmtest.VM, id string, timeout time.Duration, during func()) (netapi.Status, map[upgrade.State]time.Time) {
	t.Helper()
	seen := map[upgrade.State]time.Time{}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if during != nil {
			during()
		}
		if st, ok := vm.TryStatus(); ok && st.Upgrade != nil && st.Upgrade.ID == id {
			if _, ok := seen[st.Upgrade.State]; !ok {
				seen[st.Upgrade.State] = time.Now()
				t.Logf("upgrade %s: %s %s", id, st.Upgrade.State, st.Upgrade.Reason)
			}
			// Settled on the committed slot too (see vmtest.WaitUpgrade): a failed gate is
			// recorded on the new slot just before the node disarms and reboots.
			if st.Upgrade.State.Terminal() && st.BootedSlot == st.CommittedSlot {
				return st, seen
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("upgrade %s not finished within %s", id, timeout)
	return netapi.Status{}, nil
}

// readyAfterBoot waits until the node is Ready as reported by the kubelet of a boot other
// than notBoot (the VM's current boot).
func (c *kubeCluster) readyAfterBoot(t *testing.T, vm *vmtest.VM, name, notBoot string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	why := ""
	for time.Now().Before(deadline) {
		if st, ok := vm.TryStatus(); ok && st.BootID != notBoot {
			if n, err := c.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{}); err == nil {
				var ok bool
				if ok, why = kube.ReadyFor(n, st.BootID); ok {
					return time.Now()
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s not Ready after its reboot: %s", name, why)
	return time.Time{}
}

// readyGateBeforeCommit: this boot's events show the kubernetes-ready gate passed before the
// record reached done.
func (c *kubeCluster) readyGateBeforeCommit(t *testing.T, vm *vmtest.VM) {
	t.Helper()
	code, b, err := vm.Call("reader", "GET", "/v1/events?tail=5000", nil)
	if err != nil || code != 200 {
		t.Fatalf("events: %d %v", code, err)
	}
	ev := string(b)
	gate := strings.Index(ev, `"source":"kubernetes-ready","message":"gate passed"`)
	if gate < 0 || gate > strings.Index(ev, `"message":"done"`) {
		t.Errorf("no kubernetes-ready gate before the commit in this boot's events:\n%s", ev)
	}
}

func (c *kubeCluster) uncordoned(t *testing.T, name string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if n, err := c.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{}); err == nil && !n.Spec.Unschedulable {
			return time.Now()
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s still cordoned after %s", name, timeout)
	return time.Time{}
}

// agentDaemonSet runs on every node, ignores SIGTERM and holds a file open on a hostPath
// under /var: the upgrade's stop has to kill it and release its mounts.
func (c *kubeCluster) agentDaemonSet(t testing.TB) {
	t.Helper()
	hp := corev1.HostPathDirectoryOrCreate
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "default"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "agent"}},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "agent", Image: c.busybox,
						Command:      []string{"/bin/sh", "-c", "trap '' TERM; exec 3>>/host/held; echo agent up; while true; do sleep 3600; done"},
						VolumeMounts: []corev1.VolumeMount{{Name: "host", MountPath: "/host"}}}},
					Volumes: []corev1.Volume{{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/keel-e2e", Type: &hp}}}},
				},
			},
		},
	}
	if _, err := c.cs.AppsV1().DaemonSets("default").Create(context.Background(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// webDeployment: 2 replicas spread over the schedulable nodes, a PDB maxUnavailable=1, on the
// host network (so its preStop reaches 10.0.2.2), with a preStop hook that reports.
func (c *kubeCluster) webDeployment(t testing.TB, hookPort int) {
	t.Helper()
	labels := map[string]string{"app": "web"}
	honor := corev1.NodeInclusionPolicyHonor
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{HostNetwork: true, TerminationGracePeriodSeconds: ptr(int64(20)),
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
						WhenUnsatisfiable: corev1.DoNotSchedule, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}, NodeTaintsPolicy: &honor}},
					Containers: []corev1.Container{{Name: "web", Image: c.busybox,
						// No readiness probe: an exec probe's 1 s timeout is not TCG's pace (a
						// runc exec took longer while the other guest wrote its slot), and
						// "ready" here means the container runs.
						Command: []string{"/bin/sh", "-c", "exec sleep 3600"},
						Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
							Command: []string{"/bin/sh", "-c", fmt.Sprintf("wget -q -O- http://10.0.2.2:%d/prestop", hookPort)}}}},
					}}},
			},
		},
	}
	if _, err := c.cs.AppsV1().Deployments("default").Create(context.Background(), dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := intstr.FromInt32(1)
	pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: policyv1.PodDisruptionBudgetSpec{MaxUnavailable: &one, Selector: &metav1.LabelSelector{MatchLabels: labels}}}
	if _, err := c.cs.PolicyV1().PodDisruptionBudgets("default").Create(context.Background(), pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// podNodes counts Running, not terminating pods matching selector per node.
func (c *kubeCluster) podNodes(t *testing.T, selector string) map[string]int {
	pods, err := c.cs.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	on := map[string]int{}
	if err != nil {
		return on
	}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			on[p.Spec.NodeName]++
		}
	}
	return on
}

// watchReadyReplicas polls the Deployment's ready replicas every 250 ms until the test ends;
// the returned func gives the minimum seen so far. A drop below 1 is logged with the pods.
func (c *kubeCluster) watchReadyReplicas(t *testing.T, name string) func() int32 {
	var mu sync.Mutex
	low := int32(1 << 30)
	logged := false
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if d, err := c.cs.AppsV1().Deployments("default").Get(ctx, name, metav1.GetOptions{}); err == nil {
				mu.Lock()
				low = min(low, d.Status.ReadyReplicas)
				first := d.Status.ReadyReplicas < 1 && !logged
				logged = logged || first
				mu.Unlock()
				if first {
					var where []string
					if pods, err := c.cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + name}); err == nil {
						for _, p := range pods.Items {
							where = append(where, fmt.Sprintf("%s on %s: %s deleting=%v %+v", p.Name, p.Spec.NodeName, p.Status.Phase, p.DeletionTimestamp != nil, p.Status.Conditions))
						}
					}
					t.Logf("%s: no ready replica at %s: %s", name, time.Now().Format(time.TimeOnly), strings.Join(where, "; "))
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() int32 { mu.Lock(); defer mu.Unlock(); return low }
}

// pulledAfter: the kubelet on node reported a Pulled event saying want after since:
// "Successfully pulled" (its image store was empty) or "already present" (it was kept). The
// new boot's kubelet may take a while to restart the node's pods: waits up to 3 minutes.
func (c *kubeCluster) pulledAfter(t *testing.T, node string, since time.Time, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var msgs []string
	for time.Now().Before(deadline) {
		evs, err := c.cs.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "reason=Pulled"})
		if err != nil {
			t.Fatal(err)
		}
		msgs = msgs[:0]
		for _, e := range evs.Items {
			at := e.LastTimestamp.Time
			if at.IsZero() {
				at = e.EventTime.Time
			}
			if e.Source.Host == node && !at.Before(since.Add(-time.Second)) && strings.Contains(e.Message, want) {
				return
			}
			msgs = append(msgs, fmt.Sprintf("%s %s: %s", at.Format(time.TimeOnly), e.Source.Host, e.Message))
		}
		time.Sleep(2 * time.Second)
	}
	t.Errorf("no Pulled event %q on %s since %s; Pulled events: %q", want, node, since.Format(time.TimeOnly), msgs)
}

// guardedDeployment is a one-replica Deployment with a PDB minAvailable=1 of the same name.
func (c *kubeCluster) guardedDeployment(t *testing.T, name string) {
	t.Helper()
	labels := map[string]string{"app": name}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr(int64(5)), Containers: []corev1.Container{{Name: name, Image: c.busybox,
					Command: []string{"/bin/sh", "-c", "exec sleep 3600"}}}}}},
	}
	if _, err := c.cs.AppsV1().Deployments("default").Create(context.Background(), dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := intstr.FromInt32(1)
	pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: labels}}}
	if _, err := c.cs.PolicyV1().PodDisruptionBudgets("default").Create(context.Background(), pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// budgetBlocks waits until the disruption controller says the budget allows no disruption
// with its pod healthy (so the eviction is refused for the budget, not for an unready pod).
func (c *kubeCluster) budgetBlocks(t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		p, err := c.cs.PolicyV1().PodDisruptionBudgets("default").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && p.Status.ObservedGeneration == p.Generation && p.Status.CurrentHealthy == 1 && p.Status.DisruptionsAllowed == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("PDB %s never computed (currentHealthy 1, disruptionsAllowed 0)", name)
}
