// Package config is the node's machine configuration, kept on the STATE partition as
// config.json. The zero value of every field is its default, so an empty file is a valid
// configuration. Pure: bytes in, Config out.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"keel/cluster/kubelet"
	"keel/host"
	"keel/supervisor"
)

// FileName is the configuration's path relative to the STATE mount.
const FileName = "config.json"

// DefaultAPIPort is where the control endpoint listens when the config does not say.
const DefaultAPIPort = 50000

// Config is the node's configuration.
type Config struct {
	Hostname string  `json:"hostname,omitempty"`
	API      API     `json:"api,omitzero"`
	Network  Network `json:"network,omitzero"`
	Upgrade  Upgrade `json:"upgrade,omitzero"`
	// Role is the node's role (e.g. worker, control-plane); services may be limited to roles.
	Role string `json:"role,omitempty"`
	// Services are the system services the init supervises.
	Services []supervisor.Spec `json:"services,omitempty"`
	// Kubernetes, when set, makes upgrades cordon and drain the node first and uncordon it
	// after; without it those steps are skipped.
	Kubernetes *Kubernetes `json:"kubernetes,omitempty"`
	// Etcd makes the node a control-plane node: it runs an etcd member as a supervised
	// service, and its upgrades take the cluster-wide upgrade lease and check quorum first.
	Etcd *Etcd `json:"etcd,omitempty"`
	// Host tunes how the node prepares its own system for containers (every node does it;
	// the defaults suit a Kubernetes node).
	Host Host `json:"host,omitzero"`
}

// Host tunes the host preparation (package host).
type Host struct {
	// Sysctls add to or override the defaults (host.DefaultSysctls); an empty value removes
	// a default.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Nameservers and Search replace DHCP's in /etc/resolv.conf.
	Nameservers []string `json:"nameservers,omitempty"`
	Search      []string `json:"search,omitempty"`
	// Hosts are extra /etc/hosts lines, "ADDR NAME [NAME...]".
	Hosts []string `json:"hosts,omitempty"`
	// CACertificates is a PEM file on STATE (a path inside it) whose certificates are added
	// to the system bundle: registries behind a private CA.
	CACertificates string `json:"ca_certificates,omitempty"`
}

// Resolver is the configured part of /etc/resolv.conf.
func (h Host) Resolver() (host.Resolver, error) {
	var r host.Resolver
	for _, s := range h.Nameservers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return r, fmt.Errorf("nameserver %q: %w", s, err)
		}
		r.Nameservers = append(r.Nameservers, a)
	}
	r.Search = h.Search
	return r, nil
}

// HostsEntries are the configured /etc/hosts lines.
func (h Host) HostsEntries() ([]host.HostsEntry, error) {
	var out []host.HostsEntry
	for _, l := range h.Hosts {
		e, err := host.ParseHostsEntry(l)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (h Host) validate(hostname string) error {
	if _, err := host.Sysctls(nil, h.Sysctls); err != nil {
		return err
	}
	r, err := h.Resolver()
	if err != nil {
		return err
	}
	if _, err := host.ResolvConf(r, host.Resolver{}); err != nil {
		return err
	}
	e, err := h.HostsEntries()
	if err != nil {
		return err
	}
	if _, err := host.Hosts(hostname, nil, e); err != nil {
		return err
	}
	if c := h.CACertificates; c != "" && (strings.Contains(c, "..") || strings.HasPrefix(c, "/")) {
		return fmt.Errorf("ca_certificates must be a path inside STATE")
	}
	return nil
}

// Etcd configures this node's etcd member. Peers reach it at PeerURL and clients at
// ClientURL (advertised: behind NAT or port forwarding they differ from the listen ports).
type Etcd struct {
	// Name is the member name (default: the hostname). Members are named after their nodes.
	Name      string `json:"name,omitempty"`
	ClientURL string `json:"client_url"`
	PeerURL   string `json:"peer_url"`
	// InitialCluster bootstraps a new cluster ("n1=http://...:2380,n2=..."); ignored once the
	// data dir exists, and replaced by the live member list when the node rejoins.
	InitialCluster string `json:"initial_cluster"`
	// Endpoints are the cluster's client URLs, this member's included: the upgrade talks to
	// the cluster through them while its own member is down.
	Endpoints []string `json:"endpoints"`
	// ClientPort and PeerPort are where etcd listens (default 2379, 2380), on all addresses.
	ClientPort int `json:"client_port,omitempty"`
	PeerPort   int `json:"peer_port,omitempty"`
	// MetricsPort serves etcd's /health and /metrics over plain HTTP on loopback only
	// (default 2381): the supervisor's health check reads it without a client certificate.
	MetricsPort int `json:"metrics_port,omitempty"`
	// Insecure allows http:// URLs: etcd without TLS and without client certificates, open to
	// anyone who reaches its ports (every key, the upgrade lock, the member list). Without it,
	// every URL must be https:// and the node's PKI directory on STATE must hold the member's
	// certificates (pki/etcd/: ca.crt, server.crt/key, peer.crt/key, client.crt/key).
	Insecure bool `json:"insecure,omitempty"`
	// LeaseTTLS is the upgrade lease's TTL (default 300): it must outlast a reboot — firmware,
	// GRUB, kernel, init, network — or the lock passes on while this node is down. A node
	// that dies holding it frees it after this long.
	LeaseTTLS int `json:"lease_ttl_s,omitempty"`
	// ProbeTimeoutS bounds each member's quorum read in the pre-upgrade check (default 5).
	ProbeTimeoutS int `json:"probe_timeout_s,omitempty"`
	// CheckWaitS is how long a node that got the lease waits for the cluster to become healthy
	// enough to spare its member before it gives up (default 600).
	CheckWaitS int `json:"check_wait_s,omitempty"`
	// HeartbeatMS and ElectionMS are etcd's raft timings (default etcd's: 100 and 1000).
	HeartbeatMS int `json:"heartbeat_ms,omitempty"`
	ElectionMS  int `json:"election_ms,omitempty"`
}

// MemberName is the member's name: Name or the hostname.
func (c Config) MemberName() string {
	if c.Etcd != nil && c.Etcd.Name != "" {
		return c.Etcd.Name
	}
	return c.HostnameOrDefault()
}

func orDefault(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}

// Defaults of the etcd section.
func (e Etcd) ClientPortOr() int { return orDefault(e.ClientPort, 2379) }
func (e Etcd) PeerPortOr() int   { return orDefault(e.PeerPort, 2380) }
func (e Etcd) MetricsPortOr() int {
	return orDefault(e.MetricsPort, 2381)
}
func (e Etcd) LeaseTTL() int     { return orDefault(e.LeaseTTLS, 300) }
func (e Etcd) ProbeTimeout() int { return orDefault(e.ProbeTimeoutS, 5) }
func (e Etcd) CheckWait() int    { return orDefault(e.CheckWaitS, 600) }

// Kubernetes names the node and how to reach the API server.
type Kubernetes struct {
	NodeName string `json:"node_name"`
	// Kubeconfig is a file on STATE (relative to its root); default "kubeconfig".
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// DrainTimeoutS bounds the drain (default 120); a request may set its own.
	DrainTimeoutS int `json:"drain_timeout_s,omitempty"`
	// Kubelet, when set, makes the node a Kubernetes node: it runs containerd and a kubelet
	// as supervised services, generated from this section (package keel/cluster/kubelet).
	Kubelet *Kubelet `json:"kubelet,omitempty"`
	// ReadyTimeoutS bounds the trial's wait for this boot's kubelet to report the node Ready
	// (default 300); a trial that times out falls back to the old slot.
	ReadyTimeoutS int `json:"ready_timeout_s,omitempty"`
}

// Kubelet configures the node's kubelet and its container runtime.
type Kubelet struct {
	// PodCIDR is this node's pod subnet (required), e.g. "10.244.1.0/24".
	PodCIDR string `json:"pod_cidr"`
	// NodeIP is the address the kubelet reports (default: the primary link's first address).
	NodeIP string `json:"node_ip,omitempty"`
	// Kubeconfig is the kubelet's kubeconfig on STATE, with the node's client certificate
	// (default: kubernetes.kubeconfig).
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// ClientCA is a CA file on STATE whose client certificates the kubelet's API accepts.
	ClientCA string `json:"client_ca,omitempty"`
	// SandboxImage is the pods' pause image; a cluster without internet names its own.
	SandboxImage string `json:"sandbox_image,omitempty"`
	// RegistryMirrors maps a registry host to the endpoints to pull from instead, in order
	// ("http://" for a plain-HTTP registry).
	RegistryMirrors map[string][]string `json:"registry_mirrors,omitempty"`
	ClusterDNS      []string            `json:"cluster_dns,omitempty"`
	ClusterDomain   string              `json:"cluster_domain,omitempty"`
	MaxPods         int                 `json:"max_pods,omitempty"`
	Labels          map[string]string   `json:"labels,omitempty"`
	Verbosity       int                 `json:"verbosity,omitempty"`
}

// ReadyTimeout in seconds, defaulted.
func (k Kubernetes) ReadyTimeout() int { return orDefault(k.ReadyTimeoutS, 300) }

// KubeconfigPath is the kubeconfig's path relative to STATE.
func (k Kubernetes) KubeconfigPath() string {
	if k.Kubeconfig == "" {
		return "kubeconfig"
	}
	return k.Kubeconfig
}

// DrainTimeout in seconds, defaulted.
func (k Kubernetes) DrainTimeout() int {
	if k.DrainTimeoutS <= 0 {
		return 120
	}
	return k.DrainTimeoutS
}

// Upgrade is the node's upgrade policy.
type Upgrade struct {
	// TrustedKeys are the cosign public keys installer images must be signed with (trust.go).
	TrustedKeys []TrustedKey `json:"trusted_keys,omitempty"`
	// AllowUnsigned accepts images that carry no signature at all. Off unless said; an image
	// whose signatures do not count (untrusted, revoked, expired, another image's) is refused
	// anyway.
	AllowUnsigned bool `json:"allow_unsigned,omitempty"`
	// InsecureRegistries may be reached over plain HTTP (host, or host:port); every other
	// registry is HTTPS only, whatever its address.
	InsecureRegistries []string `json:"insecure_registries,omitempty"`
	// RegistryCA are PEM certificates registries' certificates are checked against besides
	// the node's bundle (Debian's ca-certificates): a private registry's CA.
	RegistryCA []string `json:"registry_ca,omitempty"`
	// MinVersion is the rollback floor: no installer image below it is installed, and no
	// rollback to a slot below it is made, "downgrade" or not. The node keeps the highest one
	// it has seen on META: lowering it here does not lower it.
	MinVersion string `json:"min_version,omitempty"`
	// WatchdogS is the hardware watchdog timeout during a trial boot (default 30).
	WatchdogS int `json:"watchdog_s,omitempty"`
	// TrialS bounds the health gates of a trial boot (default 60).
	TrialS int `json:"trial_s,omitempty"`
}

// WatchdogTimeout in seconds, defaulted.
func (u Upgrade) WatchdogTimeout() int {
	if u.WatchdogS <= 0 {
		return 30
	}
	return u.WatchdogS
}

// TrialTimeout in seconds, defaulted.
func (u Upgrade) TrialTimeout() int {
	if u.TrialS <= 0 {
		return 60
	}
	return u.TrialS
}

// API configures the control endpoint.
type API struct {
	Port int `json:"port,omitempty"`
}

// Network configures the primary link. IP takes the kernel's ip= syntax; empty is DHCP. The
// kernel command line's ip= overrides it (a console is where one fixes a bad address).
type Network struct {
	IP string `json:"ip,omitempty"`
}

// ErrInvalid wraps every validation failure.
var ErrInvalid = errors.New("config: invalid")

// Parse decodes config.json strictly: an unknown field is an error (a typo must not silently
// fall back to a default on a machine nobody watches).
func Parse(b []byte) (Config, error) {
	var c Config
	if len(bytes.TrimSpace(b)) == 0 {
		return c, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return c, c.Validate()
}

// Validate checks ranges.
func (c Config) Validate() error {
	if c.API.Port < 0 || c.API.Port > 65535 {
		return fmt.Errorf("%w: api.port %d", ErrInvalid, c.API.Port)
	}
	if c.Upgrade.WatchdogS < 0 || c.Upgrade.WatchdogS > 600 || c.Upgrade.TrialS < 0 || c.Upgrade.TrialS > 3600 {
		return fmt.Errorf("%w: upgrade.watchdog_s must be 0-600, trial_s 0-3600", ErrInvalid)
	}
	if err := c.Upgrade.validateTrust(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := supervisor.Order(append([]supervisor.Spec(nil), c.Services...)); err != nil {
		return fmt.Errorf("%w: services: %w", ErrInvalid, err)
	}
	// A service may not take the name of one the node generates from a section it has: the
	// two would fight over one name (a config without the section keeps its own services).
	for _, s := range c.Services {
		kube := c.Kubernetes != nil && c.Kubernetes.Kubelet != nil && kubelet.Reserved(s.Name)
		if kube || (c.Etcd != nil && s.Name == "etcd") {
			return fmt.Errorf("%w: services: %q is the node's own (from its kubernetes.kubelet or etcd section): rename it or drop the section", ErrInvalid, s.Name)
		}
	}
	if k := c.Kubernetes; k != nil {
		if k.NodeName == "" || len(k.NodeName) > 253 {
			return fmt.Errorf("%w: kubernetes.node_name is required", ErrInvalid)
		}
		if strings.Contains(k.KubeconfigPath(), "..") || strings.HasPrefix(k.KubeconfigPath(), "/") {
			return fmt.Errorf("%w: kubernetes.kubeconfig must be a path inside STATE", ErrInvalid)
		}
		if k.DrainTimeoutS < 0 || k.DrainTimeoutS > 3600 {
			return fmt.Errorf("%w: kubernetes.drain_timeout_s must be 0-3600", ErrInvalid)
		}
		if k.ReadyTimeoutS < 0 || k.ReadyTimeoutS > 3600 {
			return fmt.Errorf("%w: kubernetes.ready_timeout_s must be 0-3600", ErrInvalid)
		}
		if k.Kubelet != nil {
			if _, err := c.KubeletPlan(netip.Addr{}); err != nil {
				return fmt.Errorf("%w: kubernetes.kubelet: %w", ErrInvalid, err)
			}
		}
	}
	if e := c.Etcd; e != nil {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("%w: etcd: %w", ErrInvalid, err)
		}
	}
	if len(c.Hostname) > 64 {
		return fmt.Errorf("%w: hostname longer than 64 bytes", ErrInvalid)
	}
	if err := c.Host.validate(c.HostnameOrDefault()); err != nil {
		return fmt.Errorf("%w: host: %w", ErrInvalid, err)
	}
	return nil
}

// TLS reports whether etcd is served over TLS with client certificates (https:// URLs, the
// scheme in any case, as url.Parse reads it).
func (e Etcd) TLS() bool {
	u, err := url.Parse(e.ClientURL)
	return err == nil && u.Scheme == "https"
}

// Scheme is the URL scheme of every etcd URL: "https", or "http" when Insecure.
func (e Etcd) Scheme() string {
	if e.TLS() {
		return "https"
	}
	return "http"
}

// Validate checks the etcd section alone (Config.Validate calls it).
func (e Etcd) Validate() error {
	if len(e.Endpoints) == 0 {
		return errors.New("endpoints must list the cluster's client URLs")
	}
	urls := append([]string{e.ClientURL, e.PeerURL}, e.Endpoints...)
	for _, m := range strings.Split(e.InitialCluster, ",") {
		name, u, ok := strings.Cut(m, "=")
		if !ok || name == "" {
			return errors.New(`initial_cluster must be "name=peer-url,..."`)
		}
		urls = append(urls, u)
	}
	want := "https"
	if e.Insecure {
		want = "http"
	}
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("%q is not an http(s) URL", u)
		}
		if p.Scheme != want {
			if e.Insecure {
				return fmt.Errorf("%q: insecure is set, so every URL must be http:// (a mix of http and https is refused)", u)
			}
			return fmt.Errorf("%q: etcd URLs must be https:// (mTLS from the node's PKI); plain http needs \"insecure\": true and leaves etcd open to anyone who reaches it", u)
		}
	}
	if e.LeaseTTLS < 0 || (e.LeaseTTLS > 0 && e.LeaseTTLS < 10) || e.LeaseTTLS > 3600 {
		return errors.New("lease_ttl_s must be 10-3600 (it must outlast a reboot)")
	}
	if e.ClientPort < 0 || e.ClientPort > 65535 || e.PeerPort < 0 || e.PeerPort > 65535 || e.MetricsPort < 0 || e.MetricsPort > 65535 {
		return errors.New("client_port, peer_port and metrics_port must be 1-65535")
	}
	if e.ProbeTimeoutS < 0 || e.ProbeTimeoutS > 60 || e.CheckWaitS < 0 || e.CheckWaitS > 86400 {
		return errors.New("probe_timeout_s must be 0-60, check_wait_s 0-86400")
	}
	if e.HeartbeatMS < 0 || e.ElectionMS < 0 || (e.ElectionMS > 0 && e.ElectionMS < 5*max(e.HeartbeatMS, 100)) {
		return errors.New("election_ms must be at least 5 heartbeats")
	}
	return nil
}

// APIPort is the configured port or the default.
func (c Config) APIPort() int {
	if c.API.Port == 0 {
		return DefaultAPIPort
	}
	return c.API.Port
}

// statePath is a file on STATE named in the config: relative, inside it.
func statePath(field, p string) error {
	if p == "" || strings.Contains(p, "..") || strings.HasPrefix(p, "/") {
		return fmt.Errorf("%s must be a path inside STATE", field)
	}
	return nil
}

// KubeletPlan is the kubelet's plan from the config; nodeIP is the primary link's address,
// used unless the config names one. STATE files are given relative to state root "/state"
// (keel/sequence mounts it there).
func (c Config) KubeletPlan(nodeIP netip.Addr) (kubelet.Plan, error) {
	k := c.Kubernetes
	if k == nil || k.Kubelet == nil {
		return kubelet.Plan{}, errors.New("no kubernetes.kubelet section")
	}
	kl := k.Kubelet
	p := kubelet.Plan{NodeName: k.NodeName, NodeIP: nodeIP, SandboxImage: kl.SandboxImage, Mirrors: kl.RegistryMirrors,
		ClusterDomain: kl.ClusterDomain, MaxPods: kl.MaxPods, Labels: kl.Labels, Verbosity: kl.Verbosity}
	var err error
	if p.PodCIDR, err = netip.ParsePrefix(kl.PodCIDR); err != nil {
		return p, fmt.Errorf("pod_cidr: %w", err)
	}
	if kl.NodeIP != "" {
		if p.NodeIP, err = netip.ParseAddr(kl.NodeIP); err != nil {
			return p, fmt.Errorf("node_ip: %w", err)
		}
	}
	for _, s := range kl.ClusterDNS {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("cluster_dns: %w", err)
		}
		p.ClusterDNS = append(p.ClusterDNS, a)
	}
	kc := kl.Kubeconfig
	if kc == "" {
		kc = k.KubeconfigPath()
	}
	if err := statePath("kubeconfig", kc); err != nil {
		return p, err
	}
	p.Kubeconfig = StateRoot + "/" + kc
	if kl.ClientCA != "" {
		if err := statePath("client_ca", kl.ClientCA); err != nil {
			return p, err
		}
		p.ClientCA = StateRoot + "/" + kl.ClientCA
	}
	return p, p.Validate()
}

// StateRoot is where a node mounts STATE.
const StateRoot = "/state"

// Hostname or "keel".
func (c Config) HostnameOrDefault() string {
	if c.Hostname == "" {
		return "keel"
	}
	return c.Hostname
}
