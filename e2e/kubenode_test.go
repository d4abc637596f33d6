package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"keel/config"
	"keel/internal/testenv/kubetest"
	"keel/internal/testenv/vmtest"
	"keel/netapi"
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

func newKubeCluster(t testing.TB) *kubeCluster {
	api := kubetest.Start(t, kubetest.Options{ControlPlane: true})
	reg := vmtest.NewRegistry(t)
	kubetest.PushPause(t, reg.Addr+"/pause:test")
	kubetest.PushBusybox(t, reg.Addr+"/busybox:test")
	return &kubeCluster{api: api, cs: kubernetes.NewForConfigOrDie(api.Config), reg: reg,
		pause: reg.GuestRef("pause:test"), busybox: reg.GuestRef("busybox:test")}
}

// worker is a Kubernetes worker node's image options: its kubelet registers as name with its
// own node certificate; keel drains with the admin kubeconfig.
func (c *kubeCluster) worker(t testing.TB, name, podCIDR, version string) vmtest.ImageOptions {
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
func (c *kubeCluster) nodeReady(t testing.TB, name string, timeout time.Duration) time.Time {
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

// podsRunning waits for want Running pods matching selector.
func (c *kubeCluster) podsRunning(t testing.TB, selector string, want int, timeout time.Duration) {
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

// TestKubernetesNode, the quick loop of the Kubernetes tests (~1 min): a keel worker boots,
// its kubelet (from the slot's system image, under containerd and runc, pivoting into
// containers' roots from the init's tmpfs root) registers with the host's control plane and
// turns Ready, and a DaemonSet pod from the host registry runs on it with a pod-network
// address. TestKubernetesWorkers upgrades such nodes.
func TestKubernetesNode(t *testing.T) {
	t.Parallel()
	c := newKubeCluster(t)
	vm := vmtest.New(t, image(t, c.worker(t, "worker-1", "10.244.1.0/24", "kn-v1")))
	vm.Memory = kubeGuestMemory
	dumpKubeLogs(t, vm)
	t0 := time.Now()
	vm.Start()
	vm.WaitReady(bootTimeout)
	tEndpoint := time.Since(t0)
	tReady := c.nodeReady(t, "worker-1", 5*time.Minute).Sub(t0)
	t.Logf("kube node: QEMU start → endpoint %.1f s, → Node Ready %.1f s", tEndpoint.Seconds(), tReady.Seconds())
	c.agentDaemonSet(t)
	t1 := time.Now()
	c.podsRunning(t, "app=agent", 1, 4*time.Minute)
	pods, err := c.cs.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=agent"})
	if err != nil || len(pods.Items) != 1 || !strings.HasPrefix(pods.Items[0].Status.PodIP, "10.244.1.") {
		t.Fatalf("agent pod: %v %+v", err, pods)
	}
	t.Logf("DaemonSet pod running (IP %s) %.1f s after its creation", pods.Items[0].Status.PodIP, time.Since(t1).Seconds())
	st := vm.Status()
	if len(st.Warnings) > 0 {
		t.Errorf("warnings: %v", st.Warnings)
	}
	t.Logf("guest memory: %s", memInUse(st))
}

// memInUse is what the guest's memory is used for beyond what it could reclaim.
func memInUse(st netapi.Status) string {
	const mib = 1 << 20
	return fmt.Sprintf("%d MiB in use (MemTotal − MemAvailable) of %d MiB; init RSS %d MiB",
		(st.MemTotalBytes-st.MemAvailableBytes)/mib, st.MemTotalBytes/mib, st.InitRSSBytes/mib)
}
