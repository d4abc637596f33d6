package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"keel/controller/api"
	"keel/controller/reconciler"
	"keel/internal/fault"
	"keel/internal/testenv/controllerproc"
	"keel/internal/testenv/vmtest"
	"keel/upgrade"
)

// controllerRollout is TestKubernetesWorkers' last step (and its only failing trial): keel-controller (the real binary)
// drives the two real workers, with their real pods, under an UpgradePlan. A target whose
// kubelet never registers halts the plan at the first worker with that node's reason, the node
// rolled back, Ready and uncordoned, the other never asked; the spec edited to a good image,
// staged and with preserve=false, resumes it: both workers are staged while they serve, then
// activated one at a time, each coming back with a wiped EPHEMERAL (its kubelet registers
// again and pulls its images anew).
// The caller checks the web Deployment never dropped below one ready replica.
func (c *kubeCluster) controllerRollout(t *testing.T, vms [2]*vmtest.VM) {
	t.Helper()
	ctx := context.Background()
	bad := c.reg.PushInstaller(t, "keel:v3.5.0-kwbad", vmtest.InstallerOptions{Version: "v3.5.0-kwbad", Kube: true, Fault: string(fault.KubeletNoRegister)})
	good := c.reg.PushInstaller(t, "keel:v4.0.0-kw", vmtest.InstallerOptions{Version: "v4.0.0-kw", Kube: true})
	// The guarded Deployment's budget would block every drain: it has had its test.
	c.cs.AppsV1().Deployments("default").Delete(ctx, "db", metav1.DeleteOptions{})
	c.cs.PolicyV1().PodDisruptionBudgets("default").Delete(ctx, "db", metav1.DeleteOptions{})
	before := map[string]string{}
	for i, vm := range vms {
		name := fmt.Sprintf("worker-%d", i+1)
		n, err := c.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := n.Labels[reconciler.LabelKeelNode]; !ok {
			t.Fatalf("%s registered without the %s label: %v", name, reconciler.LabelKeelNode, n.Labels)
		}
		// The guests' addresses (10.0.2.15) are QEMU's; the controller reaches them by hostfwd.
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"127.0.0.1:%d"}}}`, reconciler.AnnotationEndpoint, vm.Port)
		if _, err := c.cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		if u := vm.Status().Upgrade; u != nil {
			before[name] = u.ID
		}
	}
	plan := &api.UpgradePlan{ObjectMeta: metav1.ObjectMeta{Name: "workers"}, Spec: api.UpgradePlanSpec{Image: bad, Concurrency: 1, DrainTimeoutSeconds: 120}}
	cl, wait := c.startPlan(t, vms[0].PKIDir(), plan)

	// The bad target halts at worker-1.
	tBad := time.Now()
	st := wait("Halted", 15*time.Minute, func(s api.UpgradePlanStatus) bool { return s.Phase == "Halted" })
	if !strings.Contains(st.Message, "node worker-1 failed: rolled-back: health gate failed: kubernetes-ready") {
		t.Errorf("halted with %q, want worker-1's rollback reason", st.Message)
	}
	t.Logf("plan halted %.0f s after it was created: %s", time.Since(tBad).Seconds(), st.Message)
	w1 := vms[0].WaitUpgrade(vms[0].Status().Upgrade.ID, 5*time.Minute)
	if w1.Upgrade.State != upgrade.RolledBack || w1.Version != "v2.0.0-kw" {
		t.Errorf("worker-1 after the halt: %s on %s", w1.Upgrade.State, w1.Version)
	}
	c.readyAfterBoot(t, vms[0], "worker-1", "", 5*time.Minute)
	c.uncordoned(t, "worker-1", 2*time.Minute)
	c.podsRunning(t, "app=agent", 2, 3*time.Minute) // the old slot's kubelet runs its pods again
	if u := vms[1].Status().Upgrade; u != nil && u.ID != before["worker-2"] {
		t.Errorf("worker-2 was asked to upgrade after the halt: %+v", u)
	}

	// The spec fixed, staged: resumed to the end.
	// Read again and retried: the controller's status writes move the resourceVersion on.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var p api.UpgradePlan
		if err := cl.Get(ctx, client.ObjectKey{Name: "workers"}, &p); err != nil {
			return err
		}
		p.Spec.Image, p.Spec.Stage, p.Spec.StageConcurrency, p.Spec.Preserve = good, true, 2, ptr(false)
		return cl.Update(ctx, &p)
	})
	if err != nil {
		t.Fatal(err)
	}
	tGood := time.Now()
	st = wait("Done", 20*time.Minute, func(s api.UpgradePlanStatus) bool { return s.Phase == "Done" })
	t.Logf("plan done %.0f s after the fix: %d/%d on %s", time.Since(tGood).Seconds(), st.Done, st.Total, st.Target)
	for i, vm := range vms {
		s := vm.Status()
		u := s.Upgrade
		if s.Version != "v4.0.0-kw" || u == nil || u.State != upgrade.Done || !u.Stage || u.ActivatedAt.IsZero() {
			t.Errorf("worker-%d: %s, record %+v", i+1, s.Version, u)
			continue
		}
		if u.Preserve {
			t.Errorf("worker-%d: the record says preserve=true, the plan said false", i+1)
		}
		t.Logf("worker-%d: staged in %.1f s while serving; activation → done %.1f s", i+1, u.ActivatedAt.Sub(u.RequestedAt).Seconds(), u.FinishedAt.Sub(u.ActivatedAt).Seconds())
		c.uncordoned(t, fmt.Sprintf("worker-%d", i+1), time.Minute)
		// EPHEMERAL was wiped: the image store is empty, the agent's image pulled again.
		c.pulledAfter(t, fmt.Sprintf("worker-%d", i+1), u.ActivatedAt, "Successfully pulled")
	}
	// The plan's story as Events (the nodes' regard the Node, the plan related).
	var evs eventsv1.EventList
	reasons := map[string]int{}
	for deadline := time.Now().Add(time.Minute); reasons["PlanDone"] == 0 && time.Now().Before(deadline); time.Sleep(time.Second) {
		reasons = map[string]int{}
		if err := cl.List(ctx, &evs); err == nil {
			for _, e := range evs.Items {
				if e.Regarding.Name == "workers" || e.Related != nil && e.Related.Name == "workers" {
					reasons[e.Reason]++
				}
			}
		}
	}
	// Each node: staging started, staged (unless its turn had come as it was staged: then
	// activated in the same pass), activated, passed its gates once.
	if reasons["NodeFailed"] != 1 || reasons["PlanHalted"] != 1 || reasons["StagingStarted"] != 2 || reasons["UpgradeStarted"] != 3 || reasons["NodeUpgraded"] != 2 || reasons["PlanDone"] != 1 {
		t.Errorf("events: %v", reasons)
	}
	t.Logf("events: %v", reasons)
}

// planWait polls a plan's status, logging each change, until ok says so (or fails the test
// after timeout).
type planWait func(what string, timeout time.Duration, ok func(api.UpgradePlanStatus) bool) api.UpgradePlanStatus

// startPlan runs keel-controller (the real binary) against the host's control plane, with
// the admin certificate of pkiDir for the nodes' endpoints, and creates plan (retried while
// the controller installs its CRD). It returns a client of the API server and the plan's wait.
func (c *kubeCluster) startPlan(t *testing.T, pkiDir string, plan *api.UpgradePlan) (client.Client, planWait) {
	t.Helper()
	ctx := context.Background()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, c.api.Kubeconfig("127.0.0.1"), 0o600); err != nil {
		t.Fatal(err)
	}
	controllerproc.Start(t, plan.Name, "-kubeconfig", kc, "-client-cert", filepath.Join(pkiDir, "admin.crt"), "-client-key", filepath.Join(pkiDir, "admin.key"),
		"-ca", filepath.Join(pkiDir, "ca.crt"), "-leader-election-namespace", "default", "-poll", "2s")
	ctrllog.SetLogger(logr.Discard()) // the test's client logs nothing worth reading
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	api.AddToScheme(scheme)
	cl, err := client.New(c.api.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if err = cl.Create(ctx, plan.DeepCopyObject().(*api.UpgradePlan)); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	wait := func(what string, timeout time.Duration, ok func(api.UpgradePlanStatus) bool) api.UpgradePlanStatus {
		t.Helper()
		var last string
		for deadline := time.Now().Add(timeout); ; time.Sleep(time.Second) {
			var p api.UpgradePlan
			if err := cl.Get(ctx, client.ObjectKey{Name: plan.Name}, &p); err == nil {
				if ok(p.Status) {
					return p.Status
				}
				if s := fmt.Sprintf("%s %d/%d %s", p.Status.Phase, p.Status.Done, p.Status.Total, p.Status.Message); s != last {
					t.Logf("plan: %s", s)
					last = s
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("plan: %s: not within %s (last %s)", what, timeout, last)
			}
		}
	}
	return cl, wait
}
