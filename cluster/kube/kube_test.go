package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"keel/internal/testenv/kubetest"
)

// One API server for the package's tests (started in TestMain); each test uses its own node
// and namespace. What needs pods to go away — a drain — needs a real kubelet: those tests are
// in e2e (TestKubernetesWorkers), against keel nodes in QEMU.
var api *kubetest.APIServer

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		panic(err)
	}
	t0 := time.Now()
	api, err = kubetest.Run(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube tests:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "kube tests: etcd and kube-apiserver ready in %.1fs\n", time.Since(t0).Seconds())
	code := m.Run()
	api.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	*kubetest.Objects
	cs kubernetes.Interface
	c  *Client
}

func setup(t *testing.T, name string) *env {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(api.Config)
	e := &env{Objects: kubetest.NewObjects(t, cs, "node-"+name, "ns-"+name), cs: cs}
	c, err := New(api.Config, e.Node, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	return e
}

func TestCordonedBySomeoneElseStaysCordoned(t *testing.T) {
	e := setup(t, "theirs")
	ctx := context.Background()
	n, _ := e.cs.CoreV1().Nodes().Get(ctx, e.Node, metav1.GetOptions{})
	n.Spec.Unschedulable = true // an operator's cordon
	if _, err := e.cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ours, err := e.c.Cordon(ctx)
	if err != nil || ours {
		t.Fatalf("cordon of a cordoned node: ours %v, %v", ours, err)
	}
	if err := e.c.Uncordon(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := e.c.Cordoned(ctx); !c {
		t.Error("uncordoned a cordon that was not ours")
	}
}

func TestUnreachableAPIServer(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	c, err := New(&rest.Config{Host: "https://" + addr, Timeout: 2 * time.Second, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}, "n", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Cordon(context.Background())
	if err == nil || !IsUnreachable(err) {
		t.Fatalf("cordon against a closed port: %v (unreachable %v)", err, IsUnreachable(err))
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error does not say why: %v", err)
	}
}

func TestRESTConfigFromKubeconfig(t *testing.T) {
	e := setup(t, "kubeconfig")
	cfg, err := RESTConfig(api.Kubeconfig("127.0.0.1"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, e.Node, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cordon(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := RESTConfig([]byte("not: [a kubeconfig"), time.Second); err == nil {
		t.Error("garbage kubeconfig accepted")
	}
}
