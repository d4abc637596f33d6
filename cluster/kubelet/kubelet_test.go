package kubelet

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"keel/supervisor"
)

func plan() Plan {
	return Plan{NodeName: "w1", NodeIP: netip.MustParseAddr("10.0.2.15"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24"),
		Kubeconfig: "/state/kubelet.kubeconfig", SandboxImage: "10.0.2.2:5000/pause:test",
		Mirrors: map[string][]string{"10.0.2.2:5000": {"http://10.0.2.2:5000"}, "docker.io": {"http://10.0.2.2:5000/", "https://mirror.example"}},
		Labels:  map[string]string{"keel.dev/pool": "a", "role": "", "node.kubernetes.io/pool": "x", "topology.kubernetes.io/zone": "z1"}}
}

func TestFiles(t *testing.T) {
	files, err := plan().Files()
	if err != nil {
		t.Fatal(err)
	}
	cd := string(files[ContainerdConfig])
	for _, want := range []string{`sandbox = "10.0.2.2:5000/pause:test"`, `BinaryName = "/system/bin/runc"`,
		"disable_apparmor = true", `bin_dirs = ["/system/libexec/cni"]`, `config_path = "/etc/containerd/certs.d"`, `address = "127.0.0.1:1338"`} {
		if !strings.Contains(cd, want) {
			t.Errorf("containerd config lacks %s:\n%s", want, cd)
		}
	}
	// A plain-HTTP registry that is its own mirror: the server itself, over http.
	if h := string(files[ContainerdCerts+"/10.0.2.2:5000/hosts.toml"]); !strings.Contains(h, `server = "http://10.0.2.2:5000"`) || strings.Contains(h, "[host.") {
		t.Errorf("hosts.toml for the local registry:\n%s", h)
	}
	h := string(files[ContainerdCerts+"/docker.io/hosts.toml"])
	if !strings.Contains(h, `server = "https://registry-1.docker.io"`) || strings.Index(h, `[host."http://10.0.2.2:5000"]`) > strings.Index(h, `[host."https://mirror.example"]`) {
		t.Errorf("hosts.toml for docker.io must list both mirrors in order, then fall back to Docker Hub:\n%s", h)
	}
	if strings.Contains(cd, "NoPivotRoot") {
		t.Error("runc must pivot_root into containers (the init's root is a tmpfs)")
	}
	var cni struct {
		Plugins []struct {
			Type string
			IPAM struct {
				Ranges [][]struct{ Subnet string }
			}
		}
	}
	if err := json.Unmarshal(files[CNIConfig], &cni); err != nil || cni.Plugins[0].Type != "bridge" || cni.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.1.0/24" {
		t.Errorf("CNI config %s: %v", files[CNIConfig], err)
	}
	var kc map[string]any
	if s := string(files[KubeletConfig]); !strings.Contains(s, `"mode": "Webhook"`) || strings.Contains(s, "AlwaysAllow") {
		t.Errorf("the kubelet's API must be authorized by the API server:\n%s", s)
	}
	if err := json.Unmarshal(files[KubeletConfig], &kc); err != nil || kc["cgroupDriver"] != "cgroupfs" || kc["podCIDR"] != "10.244.1.0/24" || kc["containerRuntimeEndpoint"] != "unix:///run/containerd/containerd.sock" {
		t.Errorf("kubelet config %s: %v", files[KubeletConfig], err)
	}
}

func TestServices(t *testing.T) {
	specs, err := plan().Services()
	if err != nil {
		t.Fatal(err)
	}
	ordered, err := supervisor.Order(specs)
	if err != nil {
		t.Fatal(err)
	}
	if ordered[0].Name != ContainerdService || ordered[1].Name != KubeletService || ordered[1].After[0] != ContainerdService {
		t.Fatalf("order: %+v", ordered)
	}
	args := strings.Join(ordered[1].Command, " ")
	for _, want := range []string{"/system/bin/kubelet ", "--kubeconfig=/state/kubelet.kubeconfig", "--hostname-override=w1", "--node-ip=10.0.2.15", "--node-labels=keel.dev/node=true,keel.dev/pool=a,node.kubernetes.io/pool=x,role=,topology.kubernetes.io/zone=z1"} {
		if !strings.Contains(args, want) {
			t.Errorf("kubelet command lacks %q: %s", want, args)
		}
	}
	if _, err := (Plan{NodeName: "w", PodCIDR: netip.MustParsePrefix("10.244.0.0/24"), Kubeconfig: "/k", Mirrors: map[string][]string{"_default": {"http://m"}}}).Files(); err != nil {
		t.Errorf("containerd's _default hosts dir refused: %v", err)
	}
	if !Reserved("kubelet") || !Reserved("containerd") || Reserved("web") {
		t.Error("Reserved")
	}
}

func TestValidate(t *testing.T) {
	bad := map[string]func(*Plan){
		"no node name":         func(p *Plan) { p.NodeName = "" },
		"no pod cidr":          func(p *Plan) { p.PodCIDR = netip.Prefix{} },
		"ipv6 pod cidr":        func(p *Plan) { p.PodCIDR = netip.MustParsePrefix("fd00::/64") },
		"tiny pod cidr":        func(p *Plan) { p.PodCIDR = netip.MustParsePrefix("10.244.1.0/30") },
		"unmasked pod cidr":    func(p *Plan) { p.PodCIDR = netip.MustParsePrefix("10.244.1.7/24") },
		"relative kubeconfig":  func(p *Plan) { p.Kubeconfig = "kubeconfig" },
		"mirror host":          func(p *Plan) { p.Mirrors = map[string][]string{"a/b": {"http://x"}} },
		"mirror url":           func(p *Plan) { p.Mirrors = map[string][]string{"docker.io": {"ftp://x"}} },
		"mirror quote":         func(p *Plan) { p.Mirrors = map[string][]string{"docker.io": {`http://x"]`}} },
		"no mirrors":           func(p *Plan) { p.Mirrors = map[string][]string{"docker.io": nil} },
		"sandbox with a quote": func(p *Plan) { p.SandboxImage = `x"` },
		"sandbox control char": func(p *Plan) { p.SandboxImage = "pause\x01" },
		"mirror host dots":     func(p *Plan) { p.Mirrors = map[string][]string{"..": {"http://x"}} },
		"cluster domain":       func(p *Plan) { p.ClusterDomain = "Bad Domain" },
		"restricted label":     func(p *Plan) { p.Labels = map[string]string{"node-role.kubernetes.io/worker": ""} },
		"label":                func(p *Plan) { p.Labels = map[string]string{"bad key!": "v"} },
		"max pods":             func(p *Plan) { p.MaxPods = 5000 },
	}
	for name, mutate := range bad {
		p := plan()
		mutate(&p)
		if _, err := p.Files(); !errors.Is(err, ErrPlan) {
			t.Errorf("%s: Files err = %v, want ErrPlan", name, err)
		}
		if _, err := p.Services(); !errors.Is(err, ErrPlan) {
			t.Errorf("%s: Services err = %v, want ErrPlan", name, err)
		}
	}
}
