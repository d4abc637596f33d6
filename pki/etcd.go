package pki

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// etcd has a CA of its own: a certificate for the node's endpoint must not open etcd, nor an
// etcd client certificate the endpoint. Names below are relative to a PKI directory: the
// development one (build/pki) or a node's on STATE (pki/), which holds no CA key.
const (
	EtcdCA    = "etcd/ca.crt"
	EtcdCAKey = "etcd/ca.key" // development directory only
	// A member's server certificate (its client URL) and peer certificate (its peer URL; peers
	// connect both ways, so it is for server and client use).
	EtcdServer     = "etcd/server.crt"
	EtcdServerKey  = "etcd/server.key"
	EtcdPeer       = "etcd/peer.crt"
	EtcdPeerKey    = "etcd/peer.key"
	EtcdClient     = "etcd/client.crt" // the init's own client certificate
	EtcdClientKey  = "etcd/client.key"
	EtcdAPIServer  = "etcd/apiserver-etcd-client.crt" // for a kube-apiserver's --etcd-certfile
	EtcdAPIServerK = "etcd/apiserver-etcd-client.key"
	EtcdAdmin      = "etcd/admin.crt" // for people: etcdctl --cert
	EtcdAdminKey   = "etcd/admin.key"
)

// ensureEtcdDev keeps the development etcd CA and its client certificates for a kube-apiserver
// and for etcdctl in dir, as EnsureDev does for the endpoint's.
func ensureEtcdDev(dir string, now time.Time, write func(string, []byte, os.FileMode) error) error {
	ca, created, err := ensureCA(dir, EtcdCA, EtcdCAKey, "keel development etcd CA", now, write)
	if err != nil {
		return err
	}
	if created {
		for _, n := range []string{EtcdAPIServer, EtcdAPIServerK, EtcdAdmin, EtcdAdminKey} {
			os.Remove(filepath.Join(dir, n))
		}
	}
	if err := ensureIssued(ca, dir, EtcdAPIServer, EtcdAPIServerK, Request{CommonName: "kube-apiserver-etcd-client", Client: true}, now, write); err != nil {
		return err
	}
	return ensureIssued(ca, dir, EtcdAdmin, EtcdAdminKey, Request{CommonName: "etcd-admin", Client: true}, now, write)
}

// LoadEtcdCA reads the etcd CA (certificate and key) from a development PKI directory.
func LoadEtcdCA(dir string) (*CA, error) {
	cb, err := os.ReadFile(filepath.Join(dir, EtcdCA))
	if err != nil {
		return nil, fmt.Errorf("pki: etcd CA: %w (run `make pki`)", err)
	}
	kb, err := os.ReadFile(filepath.Join(dir, EtcdCAKey))
	if err != nil {
		return nil, fmt.Errorf("pki: etcd CA key: %w (run `make pki`)", err)
	}
	return LoadCA(cb, kb)
}

// EtcdMember issues what one member keeps in its node's PKI directory (names as above → PEM):
// the CA certificate, a server certificate for the hosts of its client URL, a peer certificate
// for the hosts of its peer URL (both also for loopback and "localhost", which the node itself
// dials; for client use too, as etcd's gateway presents it to itself), and the init's client
// certificate, named after the member.
func EtcdMember(ca *CA, member string, clientHosts, peerHosts []string, now time.Time) (map[string][]byte, error) {
	const validity = 5 * 365 * 24 * time.Hour
	out := map[string][]byte{EtcdCA: ca.CertPEM}
	issue := func(cert, key string, r Request) error {
		r.Now, r.Validity = now, validity
		p, err := ca.Issue(r)
		if err != nil {
			return err
		}
		out[cert], out[key] = p.CertPEM, p.KeyPEM
		return nil
	}
	ips, names := splitHosts(clientHosts)
	// Client use too: etcd's gRPC gateway dials the member itself with this certificate.
	if err := issue(EtcdServer, EtcdServerKey, Request{CommonName: member, DNSNames: names, IPs: ips, Server: true, Client: true}); err != nil {
		return nil, err
	}
	ips, names = splitHosts(peerHosts)
	if err := issue(EtcdPeer, EtcdPeerKey, Request{CommonName: member, DNSNames: names, IPs: ips, Server: true, Client: true}); err != nil {
		return nil, err
	}
	if err := issue(EtcdClient, EtcdClientKey, Request{CommonName: "keel-init-" + member, Client: true}); err != nil {
		return nil, err
	}
	return out, nil
}

// splitHosts sorts hosts into IP addresses and DNS names, adding loopback and "localhost".
func splitHosts(hosts []string) ([]net.IP, []string) {
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	names := []string{"localhost"}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsLoopback() {
				ips = append(ips, ip)
			}
		} else if h != "localhost" && h != "" {
			names = append(names, h)
		}
	}
	return ips, names
}
