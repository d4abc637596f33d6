// Package controllertest runs the keel-controller binary against a real kube-apiserver and
// a fleet of simulated keel nodes (internal/testenv/keelsim: keel's real endpoint and
// upgrade executor over simulated machines; a simulation, because a fleet does not fit on
// this machine). The real nodes' proof, in QEMU, is e2e's.
package controllertest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"keel/controller/api"
	"keel/controller/deploy"
	"keel/controller/reconciler"
	"keel/internal/testenv/controllerproc"
	"keel/internal/testenv/keelsim"
	"keel/internal/testenv/kubetest"
	"keel/pki"
)

func init() {
	// The test's own clients (controller-runtime's, the simulated nodes' client-go) log
	// nothing a reader of the test needs; the controllers' logs are kept per replica.
	ctrllog.SetLogger(logr.Discard())
	klog.SetLogger(logr.Discard())
}

// env is an API server, a fleet and the controller binary.
type env struct {
	t     *testing.T
	k     *kubetest.APIServer
	cs    kubernetes.Interface
	c     client.Client
	dir   string
	nodes map[string]*keelsim.Node
	names []string
}

// fleet is what newEnv makes: cps control-plane nodes (the first carries the role label, the
// others say so only in their status) and workers, all on version v1.
type fleet struct {
	cps, workers int
	step, reboot time.Duration
	faults       map[string]keelsim.Fault
}

func newEnv(t *testing.T, f fleet) *env {
	t.Helper()
	e := &env{t: t, k: kubetest.Start(t), dir: t.TempDir(), nodes: map[string]*keelsim.Node{}}
	controllerproc.Bin(t) // built before the fleet starts: the build is the slow part
	cfg := rest.CopyConfig(e.k.Config)
	cfg.QPS, cfg.Burst = 1000, 2000 // the test's own client sets up a fleet: no client-side throttling
	e.cs = kubernetes.NewForConfigOrDie(cfg)
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	api.AddToScheme(scheme)
	var err error
	if e.c, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.EnsureDev(e.dir, []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(e.dir, "kubeconfig")
	if err := os.WriteFile(kc, e.k.Kubeconfig("127.0.0.1"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e.controllerCredentials(ctx)
	var mu sync.Mutex
	errs := make(chan error, f.cps+f.workers)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := 0; i < f.cps+f.workers; i++ {
		name := fmt.Sprintf("w%04d", i)
		cp := i < f.cps
		if cp {
			name = fmt.Sprintf("cp%d", i)
		}
		e.names = append(e.names, name)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			labels := map[string]string{reconciler.LabelKeelNode: "true"}
			if cp && name == "cp0" {
				labels[reconciler.LabelControlPlane] = ""
			}
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
			if _, err := e.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			sim, err := keelsim.Start(keelsim.Options{Name: name, Version: "v1.0.0", ControlPlane: cp, Step: f.step, Reboot: f.reboot,
				Faults: f.faults, Kube: e.cs, Kubeconfig: kc, CA: e.read("ca.crt"), Cert: e.read("server.crt"), Key: e.read("server.key")})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			e.nodes[name] = sim
			mu.Unlock()
			patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, reconciler.AnnotationEndpoint, sim.Addr())
			if _, err := e.cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, n := range e.nodes {
			n.Stop()
		}
	})
	return e
}

func (e *env) read(name string) []byte {
	b, err := os.ReadFile(filepath.Join(e.dir, name))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// controllerCredentials applies controller/deploy/rbac.yaml, writes a kubeconfig with a
// token of its ServiceAccount (the controller runs with exactly those permissions) and puts
// the nodes' client certificate in the Secret the role may read.
func (e *env) controllerCredentials(ctx context.Context) {
	t := e.t
	dec := yamlutil.NewYAMLOrJSONDecoder(bytes.NewReader(deploy.RBAC), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if err := e.c.Create(ctx, &u); err != nil {
			t.Fatalf("apply %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	exp := int64(3600)
	tok, err := e.cs.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "keel-controller",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "controller.kubeconfig"), e.k.TokenKubeconfig("127.0.0.1", "keel-controller", tok.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "keel-controller-client"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": e.read("admin.crt"), "tls.key": e.read("admin.key"), "ca.crt": e.read("ca.crt")}}
	if _, err := e.cs.CoreV1().Secrets("kube-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// startController runs a replica of the binary against the API server, with rbac.yaml's
// permissions and the client certificate from the Secret.
func (e *env) startController(name string, extra ...string) *controllerproc.Proc {
	e.t.Helper()
	return controllerproc.Start(e.t, name, append([]string{
		"-kubeconfig", filepath.Join(e.dir, "controller.kubeconfig"), "-client-secret", "kube-system/keel-controller-client",
		"-leader-election-lease-duration", "3s", "-leader-election-renew-deadline", "2s",
		"-leader-election-retry-period", "500ms", "-poll", "250ms",
	}, extra...)...)
}

// plan creates an UpgradePlan.
func (e *env) plan(name string, spec api.UpgradePlanSpec) {
	e.t.Helper()
	p := &api.UpgradePlan{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
	p.APIVersion, p.Kind = api.GroupVersion.String(), api.Kind
	// The controller installs the CRD as it starts: the first tries may find no such kind.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		err := e.c.Create(context.Background(), p.DeepCopyObject().(*api.UpgradePlan))
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal(err)
		}
	}
}

// edit changes a plan's spec as an operator would, read again and retried while the
// controller's status writes move its resourceVersion on.
func (e *env) edit(name string, change func(*api.UpgradePlanSpec)) {
	e.t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p := e.get(name)
		change(&p.Spec)
		return e.c.Update(context.Background(), &p)
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) get(name string) api.UpgradePlan {
	var p api.UpgradePlan
	if err := e.c.Get(context.Background(), client.ObjectKey{Name: name}, &p); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// waitPlan polls the plan until ok says so, or fails after limit.
func (e *env) waitPlan(name string, limit time.Duration, what string, ok func(api.UpgradePlanStatus) bool) api.UpgradePlanStatus {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		p := e.get(name)
		if ok(p.Status) {
			return p.Status
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("plan %s: %s: not after %s; phase %s %q, done %d/%d", name, what, limit, p.Status.Phase, p.Status.Message, p.Status.Done, p.Status.Total)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
