// Package pki makes the certificates of the control endpoint's mTLS: a CA, the node's server
// certificate, and client certificates whose Organization carries the caller's role.
// Keys are ECDSA P-256 (curl, Go and OpenSSL all take them; generating one costs
// microseconds, unlike RSA).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority that can issue certificates.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
}

// Pair is a PEM certificate and its PEM private key.
type Pair struct {
	CertPEM, KeyPEM []byte
}

// NewCA makes a self-signed CA valid from now for validity.
func NewCA(name string, now time.Time, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour), // tolerate a guest clock slightly behind
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// LoadCA parses a CA from PEM.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("pki: load CA: no PEM block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA key: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// KeyPEM returns the CA's private key as PEM.
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// Request describes a certificate to issue.
type Request struct {
	CommonName string
	// Orgs is the subject Organization: for clients, the roles (admin, operator, reader).
	Orgs     []string
	DNSNames []string
	IPs      []net.IP
	Server   bool // ExtKeyUsageServerAuth
	Client   bool // ExtKeyUsageClientAuth
	Now      time.Time
	Validity time.Duration
}

// Issue signs a new key pair for r.
func (ca *CA) Issue(r Request) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("pki: issue %s: %w", r.CommonName, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial(),
		Subject:        pkix.Name{CommonName: r.CommonName, Organization: r.Orgs},
		NotBefore:      r.Now.Add(-time.Hour),
		NotAfter:       r.Now.Add(r.Validity),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		DNSNames:       r.DNSNames,
		IPAddresses:    r.IPs,
		AuthorityKeyId: ca.Cert.SubjectKeyId,
	}
	if r.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if r.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return Pair{}, fmt.Errorf("pki: issue %s: %w", r.CommonName, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("pki: issue %s: %w", r.CommonName, err)
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func keyID(pub *ecdsa.PublicKey) []byte {
	b, _ := x509.MarshalPKIXPublicKey(pub)
	s := sha256.Sum256(b)
	return s[:20]
}

// Dev file names inside a development PKI directory.
const (
	FileCA         = "ca.crt"
	FileCAKey      = "ca.key"
	FileServer     = "server.crt"
	FileServerKey  = "server.key"
	FileClientCert = "%s.crt" // by role: admin.crt, operator.crt, reader.crt
	FileClientKey  = "%s.key"
)

// Roles for which EnsureDev makes client certificates.
var DevRoles = []string{"admin", "operator", "reader"}

// EnsureDev creates, in dir, a development CA, a server certificate valid for the node's
// addresses, and one client certificate per role, keeping whatever already exists (so a
// second `make run` reuses the same CA and curl keeps working). It returns the files written.
func EnsureDev(dir string, serverIPs []net.IP, serverNames []string, now time.Time) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	var written []string
	write := func(name string, b []byte, mode os.FileMode) error {
		if err := os.MkdirAll(filepath.Dir(p(name)), 0o700); err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		if err := os.WriteFile(p(name), b, mode); err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		written = append(written, p(name))
		return nil
	}
	ca, created, err := ensureCA(dir, FileCA, FileCAKey, "keel development CA", now, write)
	if err != nil {
		return nil, err
	}
	if created {
		// A new CA invalidates everything it did not sign.
		for _, n := range []string{FileServer, FileServerKey} {
			os.Remove(p(n))
		}
		for _, r := range DevRoles {
			os.Remove(p(fmt.Sprintf(FileClientCert, r)))
			os.Remove(p(fmt.Sprintf(FileClientKey, r)))
		}
	}
	issue := func(certName, keyName string, r Request) error {
		return ensureIssued(ca, dir, certName, keyName, r, now, write)
	}
	if err := issue(FileServer, FileServerKey, Request{CommonName: "keel node", DNSNames: serverNames, IPs: serverIPs, Server: true}); err != nil {
		return nil, err
	}
	for _, role := range DevRoles {
		if err := issue(fmt.Sprintf(FileClientCert, role), fmt.Sprintf(FileClientKey, role),
			Request{CommonName: "keel-" + role, Orgs: []string{role}, Client: true}); err != nil {
			return nil, err
		}
	}
	if err := ensureEtcdDev(dir, now, write); err != nil {
		return nil, err
	}
	return written, nil
}

// ensureCA loads the CA in dir/certName, dir/keyName, or makes one (created) and writes it.
func ensureCA(dir, certName, keyName, cn string, now time.Time, write func(string, []byte, os.FileMode) error) (ca *CA, created bool, err error) {
	cb, cerr := os.ReadFile(filepath.Join(dir, certName))
	kb, kerr := os.ReadFile(filepath.Join(dir, keyName))
	if cerr == nil && kerr == nil {
		ca, err = LoadCA(cb, kb)
		return ca, false, err
	}
	if ca, err = NewCA(cn, now, 10*365*24*time.Hour); err != nil {
		return nil, false, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, false, err
	}
	if err := write(keyName, keyPEM, 0o600); err != nil {
		return nil, false, err
	}
	if err := write(certName, ca.CertPEM, 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// ensureIssued issues r into dir/certName, dir/keyName unless both exist.
func ensureIssued(ca *CA, dir, certName, keyName string, r Request, now time.Time, write func(string, []byte, os.FileMode) error) error {
	if _, err := os.Stat(filepath.Join(dir, certName)); err == nil {
		if _, err := os.Stat(filepath.Join(dir, keyName)); err == nil {
			return nil
		}
	}
	r.Now, r.Validity = now, 5*365*24*time.Hour
	pair, err := ca.Issue(r)
	if err != nil {
		return err
	}
	if err := write(keyName, pair.KeyPEM, 0o600); err != nil {
		return err
	}
	return write(certName, pair.CertPEM, 0o644)
}
