// Package config is the node's machine configuration, kept on the STATE partition as
// config.json. The zero value of every field is its default, so an empty file is a valid
// configuration. Pure: bytes in, Config out.
package config

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

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
}

// Kubernetes names the node and how to reach the API server.
type Kubernetes struct {
	NodeName string `json:"node_name"`
	// Kubeconfig is a file on STATE (relative to its root); default "kubeconfig".
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// DrainTimeoutS bounds the drain (default 120); a request may set its own.
	DrainTimeoutS int `json:"drain_timeout_s,omitempty"`
}

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
	// TrustedKeys are base64 ed25519 public keys; an installer image must be signed by one.
	TrustedKeys []string `json:"trusted_keys,omitempty"`
	// AllowUnsigned accepts images without a (trusted) signature. Off unless said.
	AllowUnsigned bool `json:"allow_unsigned,omitempty"`
	// InsecureRegistries may be reached over plain HTTP (registries on private or loopback
	// addresses are anyway, as in go-containerregistry).
	InsecureRegistries []string `json:"insecure_registries,omitempty"`
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
	for _, k := range c.Upgrade.TrustedKeys {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			return fmt.Errorf("%w: upgrade.trusted_keys: %q is not a base64 ed25519 public key", ErrInvalid, k)
		}
	}
	if _, err := supervisor.Order(append([]supervisor.Spec(nil), c.Services...)); err != nil {
		return fmt.Errorf("%w: services: %w", ErrInvalid, err)
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
	}
	if len(c.Hostname) > 64 {
		return fmt.Errorf("%w: hostname longer than 64 bytes", ErrInvalid)
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

// Hostname or "keel".
func (c Config) HostnameOrDefault() string {
	if c.Hostname == "" {
		return "keel"
	}
	return c.Hostname
}
