// Package kubelet turns a node's `kubernetes.kubelet` configuration into what makes it a
// Kubernetes node: the files containerd, the CNI bridge and the kubelet read, and the two
// supervised services (containerd, then the kubelet). Pure: a Plan in, files and service specs
// out; the node writes them (keel/sequence) and its supervisor runs them.
package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"keel/disk"
	"keel/supervisor"
)

// Where things live on a node. Generated configuration is under /etc and /run (rewritten at
// every boot from the node's config); state is under /var (EPHEMERAL: preserve=false wipes
// images, pods and the kubelet's registration with it).
const (
	ContainerdConfig = "/etc/containerd/config.toml"
	ContainerdCerts  = "/etc/containerd/certs.d"
	ContainerdRoot   = "/var/lib/containerd"
	ContainerdState  = "/run/containerd"
	ContainerdSocket = ContainerdState + "/containerd.sock"
	CNIConfDir       = "/etc/cni/net.d"
	CNIConfig        = CNIConfDir + "/10-keel.conflist"
	CNIDataDir       = "/var/lib/cni"
	KubeletRoot      = "/var/lib/kubelet"
	KubeletConfig    = "/run/keel/kubelet/config.json"

	// Service names (reserved: a configured service may not take them).
	ContainerdService = "containerd"
	KubeletService    = "kubelet"

	// ContainerdMetrics is where containerd serves its metrics; its health check connects.
	ContainerdMetrics = "127.0.0.1:1338"
	// KubeletHealthz is the kubelet's own health endpoint.
	KubeletHealthz = "http://127.0.0.1:10248/healthz"

	// DefaultSandboxImage is the pause image pods' sandboxes run (the kubelet's version's).
	DefaultSandboxImage = "registry.k8s.io/pause:3.10.1"
)

// CNIBinDir holds the CNI plugins in the slot's system image.
var CNIBinDir = disk.SystemDir + "/libexec/cni"

// Plan is everything the files and services depend on.
type Plan struct {
	NodeName string
	// NodeIP is the address the kubelet reports for the node.
	NodeIP netip.Addr
	// PodCIDR is this node's pod subnet; the CNI bridge hands out its addresses.
	PodCIDR netip.Prefix
	// Kubeconfig is the kubelet's kubeconfig (the node's client certificate), an absolute
	// path on STATE.
	Kubeconfig string
	// ClientCA, if set, is the CA file (absolute path) whose client certificates the kubelet's
	// own API authenticates (the API server's, typically). Bearer tokens are checked with the
	// API server (TokenReview) and every request is authorized by it (SubjectAccessReview):
	// a certificate from this CA identifies a client, it does not admit it.
	ClientCA string
	// SandboxImage is the pause image (default DefaultSandboxImage). A cluster with no
	// internet access names one in its own registry.
	SandboxImage string
	// Mirrors maps a registry host ("docker.io", "registry.k8s.io", "10.0.2.2:5000") to the
	// endpoints containerd pulls from instead, in order ("http://10.0.2.2:5000" for a plain-HTTP
	// registry).
	Mirrors map[string][]string
	// ClusterDNS and ClusterDomain go to pods' resolv.conf (default: none, "cluster.local").
	ClusterDNS    []netip.Addr
	ClusterDomain string
	// MaxPods (default 110) and Labels (node labels the kubelet registers with).
	MaxPods int
	Labels  map[string]string
	// Verbosity is the kubelet's and containerd's log level (klog -v; 0 default).
	Verbosity int
	// StopGrace is how long the kubelet and containerd get to stop before SIGKILL.
	StopGrace time.Duration
}

// ErrPlan wraps every invalid plan.
var ErrPlan = errors.New("kubelet")

var labelKey = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
var labelValue = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
var hostRE = regexp.MustCompile(`^(_default|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?)$`)

// imageRE is a container image reference, loosely: what it must not contain matters here
// (it goes into containerd's TOML).
var imageRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,510}$`)

var domainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// kubeletLabel reports whether the kubelet lets a node set label key on itself: outside the
// kubernetes.io and k8s.io namespaces anything goes; inside them only these (NodeRestriction).
func kubeletLabel(key string) bool {
	prefix, _, ok := strings.Cut(key, "/")
	if !ok {
		return true
	}
	if !(prefix == "kubernetes.io" || prefix == "k8s.io" || strings.HasSuffix(prefix, ".kubernetes.io") || strings.HasSuffix(prefix, ".k8s.io")) {
		return true
	}
	if prefix == "kubelet.kubernetes.io" || prefix == "node.kubernetes.io" ||
		strings.HasSuffix(prefix, ".kubelet.kubernetes.io") || strings.HasSuffix(prefix, ".node.kubernetes.io") {
		return true
	}
	return slices.Contains([]string{"kubernetes.io/hostname", "kubernetes.io/arch", "kubernetes.io/os",
		"beta.kubernetes.io/instance-type", "beta.kubernetes.io/arch", "beta.kubernetes.io/os",
		"failure-domain.beta.kubernetes.io/region", "failure-domain.beta.kubernetes.io/zone",
		"topology.kubernetes.io/region", "topology.kubernetes.io/zone"}, key)
}

// Validate checks what the generated files rely on.
func (p Plan) Validate() error {
	if p.NodeName == "" {
		return fmt.Errorf("%w: no node name", ErrPlan)
	}
	if !p.PodCIDR.IsValid() || !p.PodCIDR.Addr().Is4() || p.PodCIDR.Bits() > 28 || p.PodCIDR.Masked() != p.PodCIDR {
		return fmt.Errorf("%w: pod_cidr %q must be an IPv4 subnet of at least 16 addresses (e.g. 10.244.1.0/24)", ErrPlan, p.PodCIDR)
	}
	if p.Kubeconfig == "" || !strings.HasPrefix(p.Kubeconfig, "/") {
		return fmt.Errorf("%w: kubeconfig %q must be an absolute path", ErrPlan, p.Kubeconfig)
	}
	for host, eps := range p.Mirrors {
		if !hostRE.MatchString(host) {
			return fmt.Errorf("%w: registry_mirrors: %q is not a registry host[:port]", ErrPlan, host)
		}
		if len(eps) == 0 {
			return fmt.Errorf("%w: registry_mirrors: %s has no endpoints", ErrPlan, host)
		}
		for _, e := range eps {
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(e, "\"\n\\") {
				return fmt.Errorf("%w: registry_mirrors: %s: %q is not an http(s) URL", ErrPlan, host, e)
			}
		}
	}
	if p.SandboxImage != "" && !imageRE.MatchString(p.SandboxImage) {
		return fmt.Errorf("%w: sandbox_image %q is not an image reference", ErrPlan, p.SandboxImage)
	}
	if p.ClusterDomain != "" && (len(p.ClusterDomain) > 253 || !domainRE.MatchString(p.ClusterDomain)) {
		return fmt.Errorf("%w: cluster_domain %q is not a DNS domain", ErrPlan, p.ClusterDomain)
	}
	for k, v := range p.Labels {
		if !labelKey.MatchString(k) || !labelValue.MatchString(v) {
			return fmt.Errorf("%w: node label %q=%q is not a valid label", ErrPlan, k, v)
		}
		if !kubeletLabel(k) {
			return fmt.Errorf("%w: node label %q: a kubelet may not set labels in the kubernetes.io and k8s.io namespaces but a few (NodeRestriction)", ErrPlan, k)
		}
	}
	if p.MaxPods < 0 || p.MaxPods > 1000 {
		return fmt.Errorf("%w: max_pods must be 0-1000", ErrPlan)
	}
	if p.Verbosity < 0 || p.Verbosity > 10 {
		return fmt.Errorf("%w: verbosity must be 0-10", ErrPlan)
	}
	return nil
}

// NodeLabel is the label every keel node registers with.
const NodeLabel = "keel.dev/node"

// Files are the generated files, absolute path → content, for the node to write (0644).
func (p Plan) Files() (map[string][]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	files := map[string][]byte{
		ContainerdConfig: []byte(p.containerdConfig()),
	}
	for host, eps := range p.Mirrors {
		files[ContainerdCerts+"/"+host+"/hosts.toml"] = []byte(hostsTOML(host, eps))
	}
	cni, err := p.cniConfig()
	if err != nil {
		return nil, err
	}
	files[CNIConfig] = cni
	kc, err := p.kubeletConfig()
	if err != nil {
		return nil, err
	}
	files[KubeletConfig] = kc
	return files, nil
}

func (p Plan) sandbox() string {
	if p.SandboxImage == "" {
		return DefaultSandboxImage
	}
	return p.SandboxImage
}

// containerdConfig is containerd 2.x's version-3 config. runc pivots into containers' roots
// (the init moved its own root off the initramfs: machine.MoveRoot). AppArmor is off: the node has no
// apparmor_parser to load containerd's default profile with, and Debian's kernel enables the
// LSM. The plugins the node cannot use are disabled so they do not fail at every start.
func (p Plan) containerdConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, `# Generated by keel from the node's kubernetes.kubelet configuration at every boot.
version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[metrics]
  address = %q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q

[plugins.'io.containerd.cri.v1.runtime']
  disable_apparmor = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = %q
    SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
`, ContainerdRoot, ContainerdState, ContainerdSocket, ContainerdMetrics, p.sandbox(), ContainerdCerts,
		disk.SystemBin("runc"), CNIBinDir, CNIConfDir)
	return b.String()
}

// hostsTOML is containerd's per-registry hosts file: pull from the mirrors in order, then
// the registry itself (unless it is one of its own mirrors).
func hostsTOML(host string, eps []string) string {
	server := "https://" + host
	if host == "docker.io" {
		server = "https://registry-1.docker.io"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by keel: registry_mirrors[%q].\n", host)
	for _, e := range eps {
		if strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://"), "/") == host {
			server = strings.TrimSuffix(e, "/")
		}
	}
	fmt.Fprintf(&b, "server = %q\n", server)
	for _, e := range eps {
		e = strings.TrimSuffix(e, "/")
		if e == server {
			continue
		}
		fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", e)
	}
	return b.String()
}

// cniConfig is a bridge network over this node's pod subnet. Pods reach the node and each
// other on it; there is no masquerading (that would need iptables on the node), so routing
// pod subnets between nodes is the network's job.
func (p Plan) cniConfig() ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "keel",
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": p.PodCIDR.String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": CNIDataDir + "/networks",
			},
		}},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeletConfig is a KubeletConfiguration (JSON is YAML). cgroupfs: the init, not systemd,
// owns the cgroup tree. Its API (10250: exec, logs, metrics) lets nobody in on its own say:
// no anonymous access, and the API server authenticates tokens and authorizes every request
// (the Node authorizer lets a node's credentials ask). Eviction thresholds suit small disks and guests.
func (p Plan) kubeletConfig() ([]byte, error) {
	maxPods := p.MaxPods
	if maxPods == 0 {
		maxPods = 110
	}
	domain := p.ClusterDomain
	if domain == "" {
		domain = "cluster.local"
	}
	var dns []string
	for _, a := range p.ClusterDNS {
		dns = append(dns, a.String())
	}
	x509 := map[string]any{}
	if p.ClientCA != "" {
		x509["clientCAFile"] = p.ClientCA
	}
	c := map[string]any{
		"kind":                     "KubeletConfiguration",
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"cgroupDriver":             "cgroupfs",
		"containerRuntimeEndpoint": "unix://" + ContainerdSocket,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true, "cacheTTL": "2m0s"},
			"x509":      x509,
		},
		"authorization":       map[string]any{"mode": "Webhook"},
		"failSwapOn":          false,
		"resolvConf":          "/etc/resolv.conf",
		"clusterDomain":       domain,
		"clusterDNS":          dns,
		"podCIDR":             p.PodCIDR.String(),
		"maxPods":             maxPods,
		"serializeImagePulls": false,
		"healthzBindAddress":  "127.0.0.1",
		"healthzPort":         10248,
		"readOnlyPort":        0,
		"volumePluginDir":     KubeletRoot + "/volumeplugins",
		"evictionHard": map[string]string{
			"memory.available": "50Mi", "nodefs.available": "5%", "imagefs.available": "5%",
		},
		"imageGCHighThresholdPercent": 90,
		"imageGCLowThresholdPercent":  80,
	}
	return json.MarshalIndent(c, "", "  ")
}

// Services are containerd and the kubelet (after it), for the supervisor.
func (p Plan) Services() ([]supervisor.Spec, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	grace := supervisor.Duration(p.StopGrace)
	if p.StopGrace == 0 {
		grace = supervisor.Duration(30 * time.Second)
	}
	cd := supervisor.Spec{
		Name:    ContainerdService,
		Command: []string{disk.SystemBin("containerd"), "--config", ContainerdConfig},
		Restart: supervisor.RestartAlways,
		Health:  &supervisor.Check{TCP: ContainerdMetrics, Failures: 3},
		Grace:   grace,
	}
	if p.Verbosity > 0 {
		cd.Command = append(cd.Command, "--log-level", "debug")
	}
	args := []string{disk.SystemBin("kubelet"),
		"--config=" + KubeletConfig,
		"--kubeconfig=" + p.Kubeconfig,
		"--hostname-override=" + p.NodeName,
		"--root-dir=" + KubeletRoot,
		"--cert-dir=" + KubeletRoot + "/pki",
		fmt.Sprintf("--v=%d", p.Verbosity),
	}
	if p.NodeIP.IsValid() {
		args = append(args, "--node-ip="+p.NodeIP.String())
	}
	// keel.dev/node marks the Node as a keel node: the cluster controller's plans select
	// among these (a node without keel has no endpoint to upgrade through).
	ls := []string{NodeLabel + "=true"}
	for k, v := range p.Labels {
		if k != NodeLabel {
			ls = append(ls, k+"="+v)
		}
	}
	sort.Strings(ls)
	args = append(args, "--node-labels="+strings.Join(ls, ","))
	kl := supervisor.Spec{
		Name:    KubeletService,
		Command: args,
		After:   []string{ContainerdService},
		Restart: supervisor.RestartAlways,
		Health:  &supervisor.Check{HTTP: KubeletHealthz, Failures: 3},
		Grace:   grace,
	}
	return []supervisor.Spec{cd, kl}, nil
}

// Reserved reports whether name is one of the services this package generates.
func Reserved(name string) bool {
	return slices.Contains([]string{ContainerdService, KubeletService}, name)
}
