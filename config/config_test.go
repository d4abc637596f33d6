package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	c, err := Parse(nil)
	if err != nil || c.APIPort() != DefaultAPIPort || c.HostnameOrDefault() != "keel" {
		t.Errorf("empty: %+v, %v", c, err)
	}
	c, err = Parse([]byte(`{"hostname":"n1","api":{"port":6443},"network":{"ip":"dhcp"},"role":"worker",
		"services":[{"name":"db","command":["/bin/db"],"grace":"3s","health":{"tcp":"127.0.0.1:1","interval":"500ms"}}]}`))
	if err == nil && (len(c.Services) != 1 || time.Duration(c.Services[0].Grace) != 3*time.Second) {
		t.Errorf("services: %+v", c.Services)
	}
	if err != nil || c.APIPort() != 6443 || c.Hostname != "n1" || c.Network.IP != "dhcp" {
		t.Errorf("full: %+v, %v", c, err)
	}
	for _, bad := range []string{`{"hostnam":"x"}`, `{"api":{"port":70000}}`, `{"upgrade":{"trusted_keys":["nope"]}}`, `{"upgrade":{"watchdog_s":-1}}`, `{"services":[{"name":"a","command":["/x"],"after":["b"]}]}`, `{"kubernetes":{}}`, `{"kubernetes":{"node_name":"n","kubeconfig":"../etc/x"}}`,
		`{"etcd":{}}`, `{"etcd":{"client_url":"x","peer_url":"http://a:1","initial_cluster":"a=http://a:1","endpoints":["http://a:2"]}}`,
		`{"etcd":{"client_url":"http://a:2","peer_url":"http://a:1","initial_cluster":"a=http://a:1","endpoints":[]}}`,
		`{"etcd":{"client_url":"http://a:2","peer_url":"http://a:1","initial_cluster":"a=http://a:1","endpoints":["http://a:2"],"lease_ttl_s":3}}`, `{`, `[]`} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%s) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestEtcd(t *testing.T) {
	c, err := Parse([]byte(`{"hostname":"cp1","etcd":{"client_url":"https://10.0.2.2:32379","peer_url":"https://10.0.2.2:32380",
		"initial_cluster":"cp1=https://10.0.2.2:32380","endpoints":["https://10.0.2.2:32379"]}}`))
	if err != nil || c.MemberName() != "cp1" || c.Etcd.LeaseTTL() != 300 || c.Etcd.ClientPortOr() != 2379 || c.Etcd.PeerPortOr() != 2380 || c.Etcd.MetricsPortOr() != 2381 || !c.Etcd.TLS() {
		t.Fatalf("%+v %v", c.Etcd, err)
	}
	// The scheme in capitals is still TLS (as url.Parse reads it).
	if c, err := Parse([]byte(`{"etcd":{"client_url":"HTTPS://a:2","peer_url":"https://a:1","initial_cluster":"a=https://a:1","endpoints":["https://a:2"]}}`)); err != nil || !c.Etcd.TLS() {
		t.Errorf("HTTPS in capitals: TLS %v, %v", c.Etcd != nil && c.Etcd.TLS(), err)
	}
	// Plain HTTP only when asked for, and then everywhere.
	if c, err := Parse([]byte(`{"etcd":{"insecure":true,"client_url":"http://a:2","peer_url":"http://a:1","initial_cluster":"a=http://a:1","endpoints":["http://a:2"]}}`)); err != nil || c.Etcd.TLS() || c.Etcd.Scheme() != "http" {
		t.Errorf("insecure: %v", err)
	}
	for bad, why := range map[string]string{
		`{"etcd":{"client_url":"http://a:2","peer_url":"http://a:1","initial_cluster":"a=http://a:1","endpoints":["http://a:2"]}}`:                       `must be https://`,
		`{"etcd":{"client_url":"https://a:2","peer_url":"https://a:1","initial_cluster":"a=http://a:1","endpoints":["https://a:2"]}}`:                    `"http://a:1": etcd URLs must be https://`,
		`{"etcd":{"client_url":"https://a:2","peer_url":"https://a:1","initial_cluster":"a=https://a:1","endpoints":["https://a:2","http://b:2"]}}`:      `"http://b:2"`,
		`{"etcd":{"insecure":true,"client_url":"http://a:2","peer_url":"https://a:1","initial_cluster":"a=http://a:1","endpoints":["http://a:2"]}}`:      `a mix of http and https is refused`,
		`{"etcd":{"client_url":"https://a:2","peer_url":"https://a:1","initial_cluster":"https://a:1","endpoints":["https://a:2"]}}`:                     `initial_cluster must be`,
		`{"etcd":{"client_url":"https://a:2","peer_url":"https://a:1","initial_cluster":"a=https://a:1","endpoints":["https://a:2"],"metrics_port":-1}}`: `metrics_port`,
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), why) {
			t.Errorf("Parse(%s) = %v, want ErrInvalid saying %s", bad, err, why)
		}
	}
}

func TestHostSection(t *testing.T) {
	good := `{"hostname": "w1", "host": {"sysctls": {"vm.max_map_count": "262144", "kernel.panic_on_oops": ""},
		"nameservers": ["10.0.0.2"], "search": ["lan"], "hosts": ["10.0.0.5 registry.lan"], "ca_certificates": "pki/registry-ca.crt"}}`
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := c.Host.Resolver(); len(r.Nameservers) != 1 || r.Search[0] != "lan" {
		t.Errorf("resolver %+v", r)
	}
	for _, bad := range []string{
		`{"host": {"sysctls": {"../x": "1"}}}`,
		`{"host": {"nameservers": ["ten.zero"]}}`,
		`{"host": {"search": ["bad domain"]}}`,
		`{"host": {"hosts": ["10.0.0.5"]}}`,
		`{"host": {"ca_certificates": "/etc/x"}}`,
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestKubeletSection(t *testing.T) {
	good := `{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/24", "kubeconfig": "kubelet.kubeconfig",
		"client_ca": "pki/kube-ca.crt", "cluster_dns": ["10.96.0.10"], "registry_mirrors": {"docker.io": ["http://10.0.2.2:5000"]}}}}`
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.KubeletPlan(netip.MustParseAddr("10.0.2.15"))
	if err != nil || p.Kubeconfig != "/state/kubelet.kubeconfig" || p.ClientCA != "/state/pki/kube-ca.crt" || p.NodeIP.String() != "10.0.2.15" || len(p.ClusterDNS) != 1 {
		t.Fatalf("plan %+v, %v", p, err)
	}
	// The kubelet's kubeconfig defaults to the node's; node_ip overrides the link's address.
	c, err = Parse([]byte(`{"kubernetes": {"node_name": "w1", "kubeconfig": "kc", "kubelet": {"pod_cidr": "10.244.1.0/24", "node_ip": "192.168.1.5"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if p, err := c.KubeletPlan(netip.MustParseAddr("10.0.2.15")); err != nil || p.Kubeconfig != "/state/kc" || p.NodeIP.String() != "192.168.1.5" {
		t.Fatalf("defaults: %+v, %v", p, err)
	}
	// Without the sections, services of those names are the config's own (as before them).
	if _, err := Parse([]byte(`{"services": [{"name": "kubelet", "command": ["/bin/x"]}, {"name": "etcd", "command": ["/bin/y"]}]}`)); err != nil {
		t.Errorf("own kubelet and etcd services without the sections: %v", err)
	}
	for _, bad := range []string{
		`{"kubernetes": {"node_name": "w1", "kubelet": {}}}`,
		`{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/33"}}}`,
		`{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/24", "kubeconfig": "../etc/x"}}}`,
		`{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/24", "client_ca": "/abs"}}}`,
		`{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/24", "node_ip": "x"}}}`,
		`{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/24", "cluster_dns": ["x"]}}}`,
		`{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/24", "typo": 1}}}`,
		`{"kubernetes": {"node_name": "w1", "ready_timeout_s": -1}}`,
		`{"kubernetes": {"node_name": "w1", "kubelet": {"pod_cidr": "10.244.1.0/24"}}, "services": [{"name": "kubelet", "command": ["/bin/x"]}]}`,
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%s) = %v, want ErrInvalid", bad, err)
		}
	}
	// A control-plane node's etcd is its own service: a configured one of that name is refused
	// (before, it passed validation and then no service started at all).
	_, err = Parse([]byte(`{"etcd": {"client_url": "https://a:1", "peer_url": "https://a:2", "initial_cluster": "n=https://a:2", "endpoints": ["https://a:1"]}, "services": [{"name": "etcd", "command": ["/bin/x"]}]}`))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"etcd" is the node's own`) {
		t.Errorf("a service named etcd on a control-plane node: %v", err)
	}
}
