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
	for _, bad := range []string{`{"hostnam":"x"}`, `{"api":{"port":70000}}`, `{"upgrade":{"trusted_keys":["nope"]}}`, `{"upgrade":{"watchdog_s":-1}}`, `{"services":[{"name":"a","command":["/x"],"after":["b"]}]}`, `{"kubernetes":{}}`, `{"kubernetes":{"node_name":"n","kubeconfig":"../etc/x"}}`, `{`, `[]`} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%s) = %v, want ErrInvalid", bad, err)
		}
	}
}
