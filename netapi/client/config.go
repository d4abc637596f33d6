package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Config is keelctl's file: named contexts, each a node's endpoint and the files of the CA and
// of the client certificate (whose organization is the role). Relative file names are taken
// from the config file's directory.
//
//	{"context": "dev",
//	 "contexts": {"dev": {"endpoint": "127.0.0.1:50000", "ca": "pki/ca.crt",
//	                      "cert": "pki/admin.crt", "key": "pki/admin.key"}}}
type Config struct {
	Current  string             `json:"context"`
	Contexts map[string]Context `json:"contexts"`
	dir      string
}

// Context is one node (or one role on it).
type Context struct {
	Endpoint string `json:"endpoint"` // host:port
	CA       string `json:"ca"`
	Cert     string `json:"cert"`
	Key      string `json:"key"`
}

// ConfigEnv names the config file when set; ContextEnv picks a context.
const (
	ConfigEnv  = "KEELCONFIG"
	ContextEnv = "KEELCTL_CONTEXT"
)

// DefaultConfigPath is $KEELCONFIG, else ~/.keel/config.
func DefaultConfigPath() string {
	if p := os.Getenv(ConfigEnv); p != "" {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".keel/config"
	}
	return filepath.Join(home, ".keel", "config")
}

// ErrNoConfig is a config file that does not exist.
var ErrNoConfig = errors.New("no keelctl config")

// LoadConfig reads a config file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("%w at %s", ErrNoConfig, path)
	}
	if err != nil {
		return Config{}, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	c.dir = filepath.Dir(path)
	return c, nil
}

// Pick returns the context named (or, for "", the current one) with its files made absolute.
func (c Config) Pick(name string) (string, Context, error) {
	if name == "" {
		name = c.Current
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range c.Contexts {
			if !yield(n) {
				return
			}
		}
	})
	if name == "" {
		return "", Context{}, fmt.Errorf("no context chosen: the config names none as current; pick one with --context (%s)", strings.Join(names, ", "))
	}
	ctx, ok := c.Contexts[name]
	if !ok {
		return "", Context{}, fmt.Errorf("no context %q in the config (it has: %s)", name, strings.Join(names, ", "))
	}
	for _, p := range []*string{&ctx.CA, &ctx.Cert, &ctx.Key} {
		if *p != "" && !filepath.IsAbs(*p) && c.dir != "" {
			*p = filepath.Join(c.dir, *p)
		}
	}
	if ctx.Endpoint == "" || ctx.CA == "" || ctx.Cert == "" || ctx.Key == "" {
		return "", Context{}, fmt.Errorf("context %q needs endpoint, ca, cert and key", name)
	}
	return name, ctx, nil
}

// Save writes the config (0600: it names key files).
func (c Config) Save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// NodeName is what a Client made by Dial calls its one node.
const NodeName = "node"

// Dial returns a client of the context's node (named NodeName).
func (ctx Context) Dial() (*Client, error) {
	read := func(what, p string) ([]byte, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("the context's %s: %w", what, err)
		}
		return b, nil
	}
	ca, err := read("ca", ctx.CA)
	if err != nil {
		return nil, err
	}
	cert, err := read("cert", ctx.Cert)
	if err != nil {
		return nil, err
	}
	key, err := read("key", ctx.Key)
	if err != nil {
		return nil, err
	}
	ep := ctx.Endpoint
	return NewClient(ca, cert, key, func(string) (string, error) { return ep, nil })
}
