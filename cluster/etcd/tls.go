package etcd

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"keel/pki"
)

// Files are where a member's certificates are: the etcd CA, its server and peer certificates,
// and the init's client certificate (package pki's names under a PKI directory).
type Files struct {
	CA, Cert, Key, PeerCert, PeerKey, ClientCert, ClientKey string
}

// NodeFiles are the files in the node's PKI directory on STATE.
func NodeFiles(pkiDir string) Files {
	p := func(n string) string { return filepath.Join(pkiDir, n) }
	return Files{CA: p(pki.EtcdCA), Cert: p(pki.EtcdServer), Key: p(pki.EtcdServerKey),
		PeerCert: p(pki.EtcdPeer), PeerKey: p(pki.EtcdPeerKey), ClientCert: p(pki.EtcdClient), ClientKey: p(pki.EtcdClientKey)}
}

// Missing names the files that are not there: etcd would refuse to start, or start without the
// protection the config asked for.
func (f Files) Missing() []string {
	var out []string
	for _, p := range []string{f.CA, f.Cert, f.Key, f.PeerCert, f.PeerKey, f.ClientCert, f.ClientKey} {
		if _, err := os.Stat(p); err != nil {
			out = append(out, p)
		}
	}
	return out
}

// TLSArgs are etcd's flags for mutual TLS on both its client and peer URLs: a client or peer
// must present a certificate from the etcd CA, and nothing below TLS 1.2 is spoken. etcd reads
// its own certificate at each handshake but the CA only at start: rotate with a restart.
func TLSArgs(f Files) []string {
	return []string{
		"--cert-file", f.Cert, "--key-file", f.Key, "--trusted-ca-file", f.CA, "--client-cert-auth",
		"--peer-cert-file", f.PeerCert, "--peer-key-file", f.PeerKey, "--peer-trusted-ca-file", f.CA, "--peer-client-cert-auth",
		"--tls-min-version", "TLS1.2",
	}
}

// ClientTLS is a client's TLS configuration: the etcd CA as the only root, the given client
// certificate, TLS 1.2 or later.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("etcd: TLS: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("etcd: TLS: no certificate in %s", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("etcd: TLS: client certificate: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// NodeClientTLS is the init's client configuration from the node's files.
func NodeClientTLS(f Files) (*tls.Config, error) {
	if m := f.Missing(); len(m) > 0 {
		return nil, fmt.Errorf("etcd: the config asks for TLS (https:// URLs) but the node's etcd certificates are missing: %v (the image build writes them from the etcd CA: `make pki`, or put your own there)", m)
	}
	return ClientTLS(f.CA, f.ClientCert, f.ClientKey)
}
