package install

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Maintenance is install mode's endpoint when no document URL is given: it serves only
// install-time calls, and only to the holder of the token whose hash is on the command line
// (keel.install.token). It has no CA to be checked against: its certificate is made at boot,
// and its public key's hash is printed on the console for the admin to pin (curl
// --pinnedpubkey). Routes:
//
//	GET  /v1/install   state, the steps so far, the machine's disks as install mode sees them
//	POST /v1/install   the install document (JSON): checked, then installed; 202, or 400 with
//	                   the reason and nothing done; 409 while an install runs. After a failure
//	                   a corrected document may be pushed again.
type Maintenance struct {
	tokenHash []byte
	disks     func() ([]Disk, error)
	docs      chan []byte

	// PinHex and PinBase64 are the SHA-256 of the certificate's public key.
	PinHex, PinBase64 string

	mu     sync.Mutex
	status MaintenanceStatus

	// listMu serializes looking at the disks (which mounts their ESPs) with starting an
	// install: once one runs, GET answers with the last list instead.
	listMu sync.Mutex
	listed []string
}

// MaintenanceStatus is GET /v1/install.
type MaintenanceStatus struct {
	State string   `json:"state"` // waiting, installing, done, failed
	Steps []string `json:"steps,omitempty"`
	Error string   `json:"error,omitempty"`
	Disks []string `json:"disks,omitempty"`
}

// Maintenance states.
const (
	StateWaiting    = "waiting"
	StateInstalling = "installing"
	StateDone       = "done"
	StateFailed     = "failed"
)

// NewMaintenance makes the endpoint and its TLS configuration (a fresh self-signed key).
func NewMaintenance(tokenHash []byte, disks func() ([]Disk, error)) (*Maintenance, *tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keel install mode"},
		NotBefore: time.Now().Add(-24 * time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	pin := PinHash(cert)
	m := &Maintenance{tokenHash: tokenHash, disks: disks, docs: make(chan []byte, 1),
		PinHex: hex.EncodeToString(pin), PinBase64: base64.StdEncoding.EncodeToString(pin),
		status: MaintenanceStatus{State: StateWaiting}}
	return m, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, nil
}

// Wait returns the next document an admin pushed (already checked by ParseDocument).
func (m *Maintenance) Wait(ctx context.Context) ([]byte, error) {
	select {
	case b := <-m.docs:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Step records a step of the install under way.
func (m *Maintenance) Step(step, msg string) {
	m.mu.Lock()
	m.status.Steps = append(m.status.Steps, step+": "+msg)
	m.mu.Unlock()
}

// End records how the install ended (nil: done); after a failure a new document is taken.
func (m *Maintenance) End(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		m.status.State, m.status.Error = StateDone, ""
		return
	}
	m.status.State, m.status.Error = StateFailed, err.Error()
}

// Handler serves the routes.
func (m *Maintenance) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !m.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="keel install"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "install mode: a bearer token whose sha256 is the node's keel.install.token is required"})
			return
		}
		if r.URL.Path != "/v1/install" {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "install mode serves only /v1/install"})
			return
		}
		switch r.Method {
		case http.MethodGet:
			m.listMu.Lock()
			m.mu.Lock()
			st := m.status
			st.Steps = append([]string(nil), st.Steps...)
			m.mu.Unlock()
			if st.State != StateInstalling && st.State != StateDone {
				if ds, err := m.disks(); err == nil {
					m.listed = nil
					for _, d := range ds {
						m.listed = append(m.listed, d.String())
					}
				}
			}
			st.Disks = m.listed
			m.listMu.Unlock()
			writeJSON(w, http.StatusOK, st)
		case http.MethodPost:
			b, err := io.ReadAll(io.LimitReader(r.Body, MaxDocument+1))
			if err != nil || len(b) > MaxDocument {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("install document: unreadable or larger than %d bytes", MaxDocument)})
				return
			}
			if _, _, err := ParseDocument(b); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			m.listMu.Lock()
			defer m.listMu.Unlock()
			m.mu.Lock()
			defer m.mu.Unlock()
			if s := m.status.State; s == StateInstalling || s == StateDone {
				writeJSON(w, http.StatusConflict, map[string]string{"error": "install mode: an install is " + s})
				return
			}
			m.status = MaintenanceStatus{State: StateInstalling}
			m.docs <- b
			writeJSON(w, http.StatusAccepted, m.status)
		default:
			w.Header().Set("Allow", "GET, POST")
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "GET or POST"})
		}
	})
}

func (m *Maintenance) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return false
	}
	h := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(h[:], m.tokenHash) == 1
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
