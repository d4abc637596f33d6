package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// ErrPin: the server's certificate chain holds no CA with the pinned public key, or does not
// verify against it.
var ErrPin = errors.New("the server is not vouched for by the pinned CA")

var errRedirect = errors.New("redirects are not followed: point keel.config at the document itself")

// PinHash is the pin of a CA certificate: SHA-256 of its DER SubjectPublicKeyInfo.
func PinHash(c *x509.Certificate) []byte {
	h := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return h[:]
}

// pinnedTLS trusts exactly the CA in the server's chain whose public key hashes to pin (the
// node has no other trust for this server: the document is how it gets its own). The leaf
// must chain to it and be valid for the host, as with any CA.
func pinnedTLS(host string, pin []byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below against the pinned CA, not the system's
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: no certificate", ErrPin)
			}
			roots := x509.NewCertPool()
			found := false
			for _, c := range cs.PeerCertificates {
				if c.IsCA && bytes.Equal(PinHash(c), pin) {
					roots.AddCert(c)
					found = true
				}
			}
			if !found {
				return fmt.Errorf("%w: no CA certificate in the chain has public key sha256:%x", ErrPin, pin)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter})
			if err != nil {
				return fmt.Errorf("%w: %w", ErrPin, err)
			}
			return nil
		},
	}
}

// Fetch downloads the install document from url (https), trusting only the pinned CA, and
// parses it. The server must send the CA certificate in its chain (a pin names a key, not a
// file the node could have). Transient failures (connection refused, 5xx) are retried until
// ctx ends: at boot the server may not be up yet.
func Fetch(ctx context.Context, url string, pin []byte, log func(error)) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrDocument, url, err)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pinnedTLS(req.URL.Hostname(), pin)},
		// The pin is for this server: a redirect (to plain HTTP, or another host) is refused.
		CheckRedirect: func(*http.Request, []*http.Request) error { return errRedirect }}
	defer c.CloseIdleConnections()
	for {
		b, retry, err := fetchOnce(c, req)
		if err == nil || !retry {
			return b, err
		}
		if log != nil {
			log(err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

func fetchOnce(c *http.Client, req *http.Request) (b []byte, retry bool, err error) {
	resp, err := c.Do(req)
	if err != nil {
		// A pin mismatch or a redirect is an answer, not a hiccup.
		return nil, !errors.Is(err, ErrPin) && !errors.Is(err, errRedirect), fmt.Errorf("fetch %s: %w", req.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode >= 500, fmt.Errorf("fetch %s: %s", req.URL, resp.Status)
	}
	b, err = io.ReadAll(io.LimitReader(resp.Body, MaxDocument+1))
	if err != nil {
		return nil, true, fmt.Errorf("fetch %s: %w", req.URL, err)
	}
	if len(b) > MaxDocument {
		return nil, false, fmt.Errorf("%w: %s is larger than %d bytes", ErrDocument, req.URL, MaxDocument)
	}
	return b, false, nil
}
