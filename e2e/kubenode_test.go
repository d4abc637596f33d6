package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"keel/boot"
	"keel/cluster/kube"
	"keel/config"
	"keel/internal/testenv/kubetest"
	"keel/internal/testenv/vmtest"
	"keel/upgrade"
)

// kubeCluster is a real control plane on the host (kube-apiserver, controller-manager,
// scheduler) with a registry holding the pause and busybox images, for keel nodes in QEMU.
type kubeCluster struct {
	api     *kubetest.APIServer
	cs      *kubernetes.Clientset
	reg     *vmtest.Registry
	pause   string // as guests name it
	busybox string
}

func newKubeCluster(t *testing.T) *kubeCluster {
	api := kubetest.Start(t, kubetest.Options{ControlPlane: true})
	reg := vmtest.NewRegistry(t)
	kubetest.PushPause(t, reg.Addr+"/pause:test")
	kubetest.PushBusybox(t, reg.Addr+"/busybox:test")
	return &kubeCluster{api: api, cs: kubernetes.NewForConfigOrDie(api.Config), reg: reg,
		pause: reg.GuestRef("pause:test"), busybox: reg.GuestRef("busybox:test")}
}

// worker is a Kubernetes worker node's image options: its kubelet registers as name with its
// own node certificate; keel drains with the admin kubeconfig.
func (c *kubeCluster) worker(t *testing.T, name, podCIDR, version string) vmtest.ImageOptions {
	nodeKC, err := c.api.NodeKubeconfig("10.0.2.2", name)
	if err != nil {
		t.Fatal(err)
	}
	reg := fmt.Sprintf("10.0.2.2:%d", c.reg.Port)
	return vmtest.ImageOptions{VersionA: version, Kube: true,
		Config: config.Config{Hostname: name, Kubernetes: &config.Kubernetes{NodeName: name, DrainTimeoutS: 120,
			Kubelet: &config.Kubelet{PodCIDR: podCIDR, Kubeconfig: "kubelet.kubeconfig", SandboxImage: c.pause,
				RegistryMirrors: map[string][]string{reg: {"http://" + reg}}}}},
		StateFiles: map[string][]byte{"kubeconfig": c.api.Kubeconfig("10.0.2.2"), "kubelet.kubeconfig": nodeKC},
	}
}

// nodeReady waits until the Node reports Ready and returns when it was seen so.
func (c *kubeCluster) nodeReady(t *testing.T, name string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, err := c.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return time.Now()
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s not Ready after %s: %v %+v", name, timeout, err, n.Status.Conditions)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestKubernetesNode: a keel worker boots, its kubelet (from the slot's system image, under
// containerd and runc) registers with the host's control plane and turns Ready, and a
// DaemonSet pod from the host registry runs on it. Then it upgrades for real: cordoned, its
// Deployment pod evicted through the kubelet (whose preStop hook reports to a listener here
// before the container dies), containers and their mounts gone before EPHEMERAL is unmounted,
// rebooted into the new slot, Ready as reported by the new boot's kubelet before the commit,
// uncordoned, and its DaemonSet pod running again.
func TestKubernetesNode(t *testing.T) {
	t.Parallel()
	c := newKubeCluster(t)
	v2 := c.reg.PushInstaller(t, "keel:kn-v2", vmtest.InstallerOptions{Version: "kn-v2", Kube: true})
	var preStop atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { preStop.Add(1) }))
	t.Cleanup(hook.Close)
	hookPort := hook.Listener.Addr().(*net.TCPAddr).Port
	vm := vmtest.New(t, image(t, c.worker(t, "worker-1", "10.244.1.0/24", "kn-v1")))
	vm.Memory = "1536M"
	dumpKubeLogs(t, vm)
	t0 := time.Now()
	vm.Start()
	vm.WaitReady(bootTimeout)
	tEndpoint := time.Since(t0)
	tReady := c.nodeReady(t, "worker-1", 5*time.Minute).Sub(t0)
	t.Logf("kube node: QEMU start → endpoint %.1f s, → Node Ready %.1f s", tEndpoint.Seconds(), tReady.Seconds())

	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "default"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "agent"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: c.busybox,
					Command: []string{"/bin/sh", "-c", "echo agent up; exec sleep 3600"}}}},
			},
		},
	}
	if _, err := c.cs.AppsV1().DaemonSets("default").Create(context.Background(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		pods, err := c.cs.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=agent"})
		if err == nil && len(pods.Items) == 1 && pods.Items[0].Status.Phase == corev1.PodRunning {
			t.Logf("DaemonSet pod %s running on %s (IP %s) %.1f s after its creation", pods.Items[0].Name, pods.Items[0].Spec.NodeName, pods.Items[0].Status.PodIP, time.Since(t1).Seconds())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("DaemonSet pod not running: %v %+v", err, pods)
		}
		time.Sleep(time.Second)
	}

	// A Deployment pod on the host's network (so its preStop reaches 10.0.2.2) with a grace
	// period its preStop has to use.
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{HostNetwork: true, TerminationGracePeriodSeconds: ptr(int64(20)),
					Containers: []corev1.Container{{Name: "web", Image: c.busybox,
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
	c.podsRunning(t, "app=web", 1, 3*time.Minute)
	oldBoot := vm.Status().BootID

	tUp := time.Now()
	id := vm.Upgrade(v2, true)
	st := vm.WaitUpgrade(id, 10*time.Minute)
	mustState(t, st, upgrade.Done, "kn-v2", boot.SlotB)
	if preStop.Load() == 0 {
		t.Error("the evicted pod's preStop hook never reported")
	}
	n, err := c.cs.CoreV1().Nodes().Get(context.Background(), "worker-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	newBoot := vm.Status().BootID
	if ok, why := kube.ReadyFor(n, newBoot); !ok || newBoot == oldBoot {
		t.Errorf("after the commit: %s (boot %s, was %s)", why, newBoot, oldBoot)
	}
	// The record reached done only after the new boot's kubelet reported the node Ready.
	if code, b, err := vm.Call("reader", "GET", "/v1/events?tail=2000", nil); err != nil || code != 200 {
		t.Fatalf("events: %d %v", code, err)
	} else if ev := string(b); !strings.Contains(ev, `"source":"kubernetes-ready","message":"gate passed"`) ||
		strings.Index(ev, `"source":"kubernetes-ready","message":"gate passed"`) > strings.Index(ev, `"message":"done"`) {
		t.Errorf("no kubernetes-ready gate before the commit in this boot's events:\n%s", ev)
	}
	deadline = time.Now().Add(time.Minute)
	for n.Spec.Unschedulable {
		if time.Now().After(deadline) {
			t.Fatal("node still cordoned a minute after the commit")
		}
		time.Sleep(time.Second)
		n, _ = c.cs.CoreV1().Nodes().Get(context.Background(), "worker-1", metav1.GetOptions{})
	}
	t.Logf("upgrade request → done (Ready, committed) %.1f s, → uncordoned %.1f s", st.Upgrade.FinishedAt.Sub(st.Upgrade.RequestedAt).Seconds(), time.Since(tUp).Seconds())
	c.podsRunning(t, "app=agent", 1, 3*time.Minute)
	c.podsRunning(t, "app=web", 1, 3*time.Minute)
}

// podsRunning waits for want Running pods matching selector.
func (c *kubeCluster) podsRunning(t *testing.T, selector string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pods, err := c.cs.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		running := 0
		if err == nil {
			for _, p := range pods.Items {
				if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
					running++
				}
			}
		}
		if running == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods %s: %d running, want %d (%v)", selector, running, want, err)
		}
		time.Sleep(time.Second)
	}
}

func ptr[T any](v T) *T { return &v }

// dumpKubeLogs logs the tail of the node's containerd and kubelet logs if the test fails.
func dumpKubeLogs(t *testing.T, vm *vmtest.VM) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, svc := range []string{"containerd", "kubelet"} {
			if code, b, err := vm.Call("reader", "GET", "/v1/logs/"+svc+"?tail=60", nil); err == nil {
				t.Logf("%s log (%d):\n%s", svc, code, b)
			}
		}
	})
}
