package config

import (
	"errors"
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
	c, err := Parse([]byte(`{"hostname":"cp1","etcd":{"client_url":"http://10.0.2.2:32379","peer_url":"http://10.0.2.2:32380",
		"initial_cluster":"cp1=http://10.0.2.2:32380","endpoints":["http://10.0.2.2:32379"]}}`))
	if err != nil || c.MemberName() != "cp1" || c.Etcd.LeaseTTL() != 300 || c.Etcd.ClientPortOr() != 2379 || c.Etcd.PeerPortOr() != 2380 {
		t.Fatalf("%+v %v", c.Etcd, err)
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
