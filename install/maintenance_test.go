package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMaintenance(t *testing.T) {
	p := newTestPKI(t)
	token := "s3cret-token"
	th := sha256.Sum256([]byte(token))
	m, tlsCfg, err := NewMaintenance(th[:], func() ([]Disk, error) {
		return []Disk{{Dev: "/dev/nvme0n1", Size: 1 << 30, Content: Content{State: Blank}}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(m.Handler())
	srv.TLS = tlsCfg
	srv.StartTLS()
	defer srv.Close()
	// The admin's client trusts exactly the key printed on the console.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if hex.EncodeToString(PinHash(cs.PeerCertificates[0])) != m.PinHex {
				return errors.New("pin mismatch")
			}
			return nil
		}}}}
	call := func(method, tok string, body []byte) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+"/v1/install", bytes.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	good := docJSON(t, p, nil)
	for _, tok := range []string{"", "wrong", token + "x"} {
		if code, _ := call("POST", tok, good); code != http.StatusUnauthorized {
			t.Errorf("token %q: %d, want 401", tok, code)
		}
	}
	if code, b := call("GET", token, nil); code != 200 || !strings.Contains(b, `"state":"waiting"`) || !strings.Contains(b, "/dev/nvme0n1 (1024 MiB, blank)") {
		t.Errorf("GET: %d %s", code, b)
	}
	if code, b := call("POST", token, docJSON(t, p, func(m map[string]any) { delete(m, "image") })); code != 400 || !strings.Contains(b, "no image") {
		t.Errorf("bad document: %d %s", code, b)
	}
	select {
	case <-m.docs:
		t.Fatal("a refused document reached the install")
	default:
	}
	if code, b := call("POST", token, good); code != 202 {
		t.Fatalf("POST: %d %s", code, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := m.Wait(ctx)
	if err != nil || !bytes.Equal(got, good) {
		t.Fatalf("Wait: %v", err)
	}
	if code, _ := call("POST", token, good); code != http.StatusConflict {
		t.Errorf("POST while installing: %d, want 409", code)
	}
	m.Step("disk", "installing on /dev/nvme0n1")
	m.End(errors.New("disk holds data"))
	var st MaintenanceStatus
	_, b := call("GET", token, nil)
	if json.Unmarshal([]byte(b), &st); st.State != StateFailed || st.Error != "disk holds data" || len(st.Steps) != 1 {
		t.Errorf("after a failure: %s", b)
	}
	if code, _ := call("POST", token, good); code != 202 {
		t.Errorf("POST after a failure: %d, want 202 (a corrected document may be pushed)", code)
	}
	m.Wait(ctx)
	m.End(nil)
	if code, _ := call("POST", token, good); code != http.StatusConflict {
		t.Errorf("POST after done: %d, want 409", code)
	}
	if code, _ := call("DELETE", token, nil); code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d", code)
	}
}
