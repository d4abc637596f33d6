// Command keel-controller keeps a cluster of keel nodes updated: it follows UpgradePlans
// (keel.dev/v1alpha1) and upgrades the nodes they select through each node's keel endpoint.
// Run it in the cluster (a Deployment, two replicas: a Lease elects the one that acts) or
// beside it with a kubeconfig. Wiring only: the logic is in controller/.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"keel/controller/api"
	"keel/controller/channel"
	"keel/controller/reconciler"
	"keel/installer"
	nodeclient "keel/netapi/client"
)

func main() {
	var (
		secret     = flag.String("client-secret", "", "NAMESPACE/NAME of a Secret with the client certificate for the nodes' endpoints (tls.crt, tls.key, ca.crt: the nodes' CA); or give the three files")
		certFile   = flag.String("client-cert", "", "client certificate file (PEM) for the nodes' endpoints (an admin certificate)")
		keyFile    = flag.String("client-key", "", "its key file (PEM)")
		caFile     = flag.String("ca", "", "the nodes' endpoint CA file (PEM)")
		port       = flag.Int("node-port", reconciler.DefaultPort, "the nodes' keel endpoint port (a Node's keel.dev/endpoint annotation overrides its address)")
		poll       = flag.Duration("poll", 5*time.Second, "how often a rolling plan reads its nodes again")
		elect      = flag.Bool("leader-elect", true, "elect a leader through a Lease, so replicas are safe")
		electNS    = flag.String("leader-election-namespace", "", "namespace of the Lease (default: the pod's own, else kube-system)")
		leaseName  = flag.String("leader-election-id", "keel-controller", "name of the Lease")
		leaseDur   = flag.Duration("leader-election-lease-duration", 15*time.Second, "how long a replica waits after the leader's last renewal before it takes over")
		renew      = flag.Duration("leader-election-renew-deadline", 10*time.Second, "how long the leader tries to renew before it gives up leading")
		retry      = flag.Duration("leader-election-retry-period", 2*time.Second, "how often replicas try to take or renew the Lease")
		metricsAt  = flag.String("metrics-bind-address", ":8080", `address of the Prometheus metrics endpoint ("0": off)`)
		probesAt   = flag.String("health-probe-bind-address", ":8081", `address of /healthz and /readyz ("0": off)`)
		installCRD = flag.Bool("install-crd", true, "create or update the UpgradePlan CRD at start")
		qps        = flag.Float64("kube-api-qps", 50, "requests per second to the API server (status writes, Events, leader election)")
		burst      = flag.Int("kube-api-burst", 100, "burst of requests to the API server")
		refresh    = flag.Duration("channel-refresh", 5*time.Minute, "how often a channel plan looks for a newer release")
	)
	var keys, insecure, regCAs list
	flag.Var(&keys, "trusted-key", "a cosign public key file (cosign.pub) channel releases may be signed with; repeat for more (a channel plan needs one)")
	flag.Var(&regCAs, "registry-ca", "a CA file (PEM) channels' registries may be signed by, besides the system's bundle; repeat for more")
	flag.Var(&insecure, "insecure-registry", "a registry (host or host:port) channels may reach over plain HTTP; repeat for more")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	klog.SetSlogLogger(log)
	if err := run(ctrl.SetupSignalHandler(), log, options{
		secret: *secret, cert: *certFile, key: *keyFile, ca: *caFile, port: *port, poll: *poll,
		elect: *elect, electNS: *electNS, lease: *leaseName, leaseDur: *leaseDur, renew: *renew, retry: *retry, metrics: *metricsAt, probes: *probesAt, installCRD: *installCRD, qps: float32(*qps), burst: *burst,
		keys: keys, registryCAs: regCAs, insecure: insecure, refresh: *refresh,
	}); err != nil {
		log.Error("keel-controller", "err", err)
		os.Exit(1)
	}
}

type options struct {
	secret, cert, key, ca string
	port                  int
	poll                  time.Duration
	elect                 bool
	electNS, lease        string
	leaseDur, renew       time.Duration
	retry                 time.Duration
	metrics, probes       string
	installCRD            bool
	qps                   float32
	burst                 int
	keys, insecure        list
	registryCAs           list
	refresh               time.Duration
}

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// channels is the resolver of channel plans: the trusted keys and the registries' trust (as
// a node's: the system's bundle and the CAs given).
func channels(o options, log *slog.Logger) (*channel.Resolver, error) {
	r := &channel.Resolver{Insecure: o.insecure, Refresh: o.refresh, Log: log}
	for _, f := range o.keys {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("-trusted-key: %w", err)
		}
		k, err := installer.ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("-trusted-key %s: %w", f, err)
		}
		r.TrustedKeys = append(r.TrustedKeys, installer.TrustedKey{Name: strings.TrimSuffix(filepath.Base(f), filepath.Ext(f)), Key: k})
	}
	for _, f := range o.registryCAs {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("-registry-ca: %w", err)
		}
		if r.RootCAs == nil {
			if r.RootCAs, err = x509.SystemCertPool(); err != nil {
				r.RootCAs = x509.NewCertPool()
			}
		}
		if !r.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("-registry-ca %s: no PEM certificate in it", f)
		}
	}
	return r, nil
}

func run(ctx context.Context, log *slog.Logger, o options) error {
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "keel-controller"
	cfg.QPS, cfg.Burst = o.qps, o.burst
	certPEM, keyPEM, caPEM, err := credentials(ctx, cfg, o)
	if err != nil {
		return err
	}
	resolver, err := channels(o, log)
	if err != nil {
		return err
	}
	if o.installCRD {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := reconciler.InstallCRD(cctx, cfg)
		cancel()
		if err != nil {
			return err
		}
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := api.AddToScheme(scheme); err != nil {
		return err
	}
	ns := o.electNS
	if ns == "" {
		ns = podNamespace()
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		LeaderElection:                o.elect,
		LeaderElectionID:              o.lease,
		LeaderElectionNamespace:       ns,
		LeaderElectionReleaseOnCancel: true, // a replica that stops hands over at once
		LeaseDuration:                 &o.leaseDur,
		RenewDeadline:                 &o.renew,
		RetryPeriod:                   &o.retry,
		Metrics:                       metricsserver.Options{BindAddress: o.metrics},
		HealthProbeBindAddress:        o.probes,
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if o.probes != "0" {
		if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
			return err
		}
	}
	nodes, err := nodeclient.NewClient(caPEM, certPEM, keyPEM, reconciler.Addr(mgr.GetClient(), o.port))
	if err != nil {
		return fmt.Errorf("the nodes' client certificate: %w", err)
	}
	r := &reconciler.Reconciler{
		Client: mgr.GetClient(), Plans: mgr.GetAPIReader(), Nodes: nodes, Streams: nodes, HTTP: &http.Client{Timeout: 10 * time.Second},
		Events: mgr.GetEventRecorder("keel-controller"), Metrics: reconciler.NewMetrics(metrics.Registry),
		Log: log, Poll: o.poll, Channels: resolver,
	}
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		return err
	}
	log.Info("keel-controller starting", "leader_election", o.elect, "lease", ns+"/"+o.lease, "metrics", o.metrics)
	return mgr.Start(ctx)
}

// credentials are the client certificate, its key and the nodes' CA, from the Secret or the
// files.
func credentials(ctx context.Context, cfg *rest.Config, o options) (cert, key, ca []byte, err error) {
	files := o.cert != "" || o.key != "" || o.ca != ""
	switch {
	case o.secret != "" && files:
		return nil, nil, nil, errors.New("give -client-secret or -client-cert/-client-key/-ca, not both")
	case o.secret != "":
		ns, name, ok := strings.Cut(o.secret, "/")
		if !ok || ns == "" || name == "" {
			return nil, nil, nil, fmt.Errorf("-client-secret %q: want NAMESPACE/NAME", o.secret)
		}
		c, err := client.New(cfg, client.Options{})
		if err != nil {
			return nil, nil, nil, err
		}
		var s corev1.Secret
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
			return nil, nil, nil, fmt.Errorf("client certificate secret: %w", err)
		}
		for _, k := range []string{"tls.crt", "tls.key", "ca.crt"} {
			if len(s.Data[k]) == 0 {
				return nil, nil, nil, fmt.Errorf("secret %s has no %s", o.secret, k)
			}
		}
		return s.Data["tls.crt"], s.Data["tls.key"], s.Data["ca.crt"], nil
	case o.cert != "" && o.key != "" && o.ca != "":
		var out [3][]byte
		for i, f := range []string{o.cert, o.key, o.ca} {
			if out[i], err = os.ReadFile(f); err != nil {
				return nil, nil, nil, err
			}
		}
		return out[0], out[1], out[2], nil
	}
	return nil, nil, nil, errors.New("the nodes' endpoints need a client certificate: -client-secret NAMESPACE/NAME, or -client-cert, -client-key and -ca")
}

// podNamespace is the namespace the controller runs in, in a pod; else kube-system.
func podNamespace() string {
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil && len(b) > 0 {
		return strings.TrimSpace(string(b))
	}
	return "kube-system"
}
