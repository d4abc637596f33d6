package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"keel/boot"
	"keel/cluster/kube"
	"keel/config"
	"keel/internal/testenv/kubetest"
	"keel/internal/testenv/vmtest"
	"keel/upgrade"
)

// TestKubernetesUpgrade: the node in QEMU talks to a real kube-apiserver on the host
// (10.0.2.2 from the guest). An upgrade cordons and drains it before the reboot (ReplicaSet
// pods evicted, the DaemonSet pod left) and uncordons it after the commit. Then an upgrade
// whose drain a PodDisruptionBudget blocks aborts, names the budget, and leaves the node
// uncordoned on its old version, without a reboot. The test plays the kubelet (deleting
// terminating pods) and the controller-manager (PDB status): there are none.
func TestKubernetesUpgrade(t *testing.T) {
	t.Parallel()
	api := kubetest.Start(t)
	cs := kubernetes.NewForConfigOrDie(api.Config)
	o := kubetest.NewObjects(t, cs, "keel-e2e", "apps")
	o.Kubelet(t)
	rs := o.ReplicaSet(t, "web")
	o.Pod(t, "web-1", map[string]string{"app": "web"}, rs)
	o.Pod(t, "web-2", map[string]string{"app": "web"}, rs)
	o.Pod(t, "agent", map[string]string{"app": "agent"}, o.DaemonSet(t, "agent"))

	reg := vmtest.NewRegistry(t)
	v2 := reg.PushInstaller(t, "keel:e2e-v2", vmtest.InstallerOptions{Version: "e2e-v2"})
	v3 := reg.PushInstaller(t, "keel:e2e-v3", vmtest.InstallerOptions{Version: "e2e-v3"})
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "e2e-v1",
		Config:     config.Config{Kubernetes: &config.Kubernetes{NodeName: o.Node, DrainTimeoutS: 60}},
		StateFiles: map[string][]byte{"kubeconfig": api.Kubeconfig("10.0.2.2")}}))
	vm.Start()
	vm.WaitReady(bootTimeout)
	if st := vm.Status(); st.Kubernetes != "node keel-e2e" {
		t.Fatalf("status kubernetes = %q", st.Kubernetes)
	}

	id := vm.Upgrade(v2, true)
	// Cordoned by us, with our mark, before the reboot.
	deadline := time.Now().Add(upgradeTimeout)
	for {
		c, ann := o.NodeCordon(t)
		if c && ann[kube.AnnotationCordonedBy] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node never cordoned by the upgrade")
		}
		time.Sleep(100 * time.Millisecond)
	}
	vm.Expect(`keel-upgrade id=`+id+` state=rebooting`, upgradeTimeout)
	if pods := o.PodNames(t); !slices.Equal(pods, []string{"agent"}) {
		t.Errorf("pods before the reboot: %v, want only the DaemonSet pod", pods)
	}
	st := vm.WaitUpgrade(id, upgradeTimeout)
	mustState(t, st, upgrade.Done, "e2e-v2", boot.SlotB)
	deadline = time.Now().Add(time.Minute)
	for {
		c, ann := o.NodeCordon(t)
		if !c && ann[kube.AnnotationCordonedBy] == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node still cordoned after the commit; record %+v", vm.Status().Upgrade)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := vm.Status(); !strings.Contains(st.Upgrade.Kubernetes, "cordoned; drained") || st.Upgrade.Uncordon {
		t.Errorf("record kubernetes %q, uncordon pending %v", st.Upgrade.Kubernetes, st.Upgrade.Uncordon)
	}

	// A PDB that allows no disruption blocks the next upgrade's drain.
	o.Pod(t, "db-0", map[string]string{"app": "db"}, o.ReplicaSet(t, "db"))
	o.BlockingPDB(t, "db-pdb", "db")
	bootID := vm.Status().BootID
	code, b, err := vm.Call("admin", "POST", "/v1/upgrade", map[string]any{"image": v3, "preserve": true, "drain_timeout_s": 10})
	if err != nil || code != 202 {
		t.Fatalf("upgrade: %d %v %s", code, err, b)
	}
	st = vm.Status()
	st = vm.WaitUpgrade(st.Upgrade.ID, upgradeTimeout)
	mustState(t, st, upgrade.Aborted, "e2e-v2", boot.SlotB)
	if !strings.Contains(st.Upgrade.Reason, "PodDisruptionBudget apps/db-pdb") {
		t.Errorf("reason %q does not name the PDB", st.Upgrade.Reason)
	}
	if d := st.Drain; d == nil || d.UpgradeID != st.Upgrade.ID || d.PodsLeft != 1 {
		t.Errorf("status drain = %+v, want 1 pod left (db-0)", d)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		if c, _ := o.NodeCordon(t); !c {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node left cordoned after the aborted upgrade")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := vm.Status(); st.BootID != bootID {
		t.Error("the node rebooted for an upgrade aborted in the drain")
	}
}
