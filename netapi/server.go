// Package netapi is the node's control endpoint: HTTPS with client certificates (mTLS), JSON
// in and out, roles taken from the client certificate's Organization.
package netapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"keel/events"
	"keel/journal"
	"keel/supervisor"
	"keel/upgrade"
)

// Role is what a caller may do. Roles are ordered: each can do what the ones below can.
type Role int

// Roles, lowest first.
const (
	RoleNone     Role = iota // authenticated by the CA but without a known role
	RoleReader               // read status, logs, events
	RoleOperator             // also reboot, restart services
	RoleAdmin                // also upgrade, roll back, reset, shut down
)

func (r Role) String() string {
	switch r {
	case RoleReader:
		return "reader"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// RoleOf is the highest role named in the certificate's subject Organization.
func RoleOf(c *x509.Certificate) Role {
	best := RoleNone
	for _, o := range c.Subject.Organization {
		for _, r := range []Role{RoleReader, RoleOperator, RoleAdmin} {
			if strings.EqualFold(o, r.String()) && r > best {
				best = r
			}
		}
	}
	return best
}

// Node is what the endpoint asks of the running node.
type Node interface {
	Status() Status
	Version() Version
	// Reboot and Shutdown start the ordered shutdown and return at once; the node goes down
	// after the response is written.
	Reboot(reason string) error
	Shutdown(reason string) error
	// StartUpgrade starts an upgrade and returns its id at once.
	StartUpgrade(UpgradeRequest) (UpgradeAccepted, error)
	// CancelUpgrade ends an upgrade that has changed nothing yet (pulling, waiting for the
	// upgrade lease, checking the etcd cluster), or discards a staged one.
	CancelUpgrade() error
	// ActivateUpgrade goes on with the staged upgrade (id, if not "", must be the one
	// staged): cordon, drain, stop, reboot into the slot written while the node served. It
	// returns at once.
	ActivateUpgrade(id string) (UpgradeAccepted, error)
	// Rollback commits the other slot and reboots.
	Rollback() error
	// Services lists the supervised services.
	Services() []supervisor.Status
	// RestartService restarts one service.
	RestartService(name string) error
	// LogRing is a service's output, or the init's own log under the name "init".
	LogRing(name string) (*events.Ring, error)
	// PastLog is the files of log name of an earlier boot (back < 0: -1 is the boot before
	// this one), oldest first; ErrNotFound when that boot or that log was not kept.
	PastLog(name string, back int) ([]string, error)
	// Boots are the boots whose logs are kept on EPHEMERAL, this one first.
	Boots() ([]journal.Boot, error)
	// Events is the event stream's ring of NDJSON lines.
	Events() *events.Ring
	// Dmesg calls emit for each kernel log record; with follow, until ctx ends.
	Dmesg(ctx context.Context, follow bool, emit func(any) error) error
	// Reset wipes the named partitions and reboots.
	Reset(wipe []string) error
	// EtcdSnapshot opens a saved etcd snapshot by its file name (as Status lists it);
	// ErrNotFound for any other name.
	EtcdSnapshot(name string) (File, error)
}

// File is a file the node sends (an *os.File does).
type File interface {
	io.ReadSeekCloser
	Stat() (os.FileInfo, error)
}

// ResetRequest is the body of POST /v1/reset.
type ResetRequest struct {
	Wipe []string `json:"wipe"`
}

// Wipeable are the partitions POST /v1/reset may wipe.
var Wipeable = []string{"EPHEMERAL", "STATE"}

// UpgradeError maps the upgrade executor's refusals onto the endpoint's errors.
func UpgradeError(err error) error {
	switch {
	case errors.Is(err, upgrade.ErrBusy), errors.Is(err, upgrade.ErrShutdown), errors.Is(err, upgrade.ErrTooLate):
		return fmt.Errorf("%w: %v", ErrConflict, err)
	case errors.Is(err, upgrade.ErrInvalid):
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	case errors.Is(err, upgrade.ErrStale):
		return fmt.Errorf("%w: %v", ErrStaleStaged, err)
	case errors.Is(err, upgrade.ErrRefused):
		return fmt.Errorf("%w: %v", ErrPrecondition, err)
	case errors.Is(err, upgrade.ErrUnexpected):
		return fmt.Errorf("%w: no upgrade in flight", ErrConflict)
	}
	return err
}

// Errors a Node returns to pick the HTTP status; anything else is a 500.
var (
	ErrBadRequest   = errors.New("bad request")         // 400
	ErrConflict     = errors.New("conflict")            // 409
	ErrPrecondition = errors.New("precondition failed") // 412
	// ErrStaleStaged: a 412 (code "stale_staged") for a staged upgrade that can never be
	// activated (a floor raised, a key expired since): a caller should discard it, not retry.
	ErrStaleStaged = fmt.Errorf("%w", ErrPrecondition)
	ErrNotFound    = errors.New("not found") // 404
)

// Options configure a Server.
type Options struct {
	Node Node
	Log  *slog.Logger
	// Metrics serves GET /metrics (Prometheus text format; role reader). nil: 404.
	Metrics http.Handler
}

// Server serves the API. Build it with New.
type Server struct {
	node    Node
	log     *slog.Logger
	mux     *http.ServeMux
	streams chan struct{}
	// methodRoutes records the paths given a JSON 405 fallback.
	methodRoutes map[string]bool
	routes       []registered
	openapi      []byte // GET /v1/openapi.json
	openapiErr   error
}

// registered is a route as registered: its pattern and the role it needs.
type registered struct {
	pattern string
	role    Role
}

// New returns a Server for node.
func New(o Options) *Server {
	s := &Server{node: o.Node, log: o.Log, mux: http.NewServeMux(), streams: make(chan struct{}, MaxStreams), methodRoutes: map[string]bool{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.route("GET /v1/openapi.json", RoleReader, s.openAPI)
	s.route("GET /v1/version", RoleReader, s.version)
	s.route("GET /v1/status", RoleReader, s.status)
	s.route("POST /v1/reboot", RoleOperator, s.reboot)
	s.route("POST /v1/shutdown", RoleAdmin, s.shutdown)
	s.route("POST /v1/upgrade", RoleAdmin, s.upgrade)
	s.route("POST /v1/upgrade/cancel", RoleAdmin, s.cancelUpgrade)
	s.route("POST /v1/upgrade/activate", RoleAdmin, s.activateUpgrade)
	s.route("POST /v1/rollback", RoleAdmin, s.rollback)
	s.route("POST /v1/reset", RoleAdmin, s.reset)
	s.route("GET /v1/services", RoleReader, s.services)
	s.route("POST /v1/services/{name}/restart", RoleOperator, s.restartService)
	s.route("GET /v1/logs/{name}", RoleReader, s.logs)
	s.route("GET /v1/boots", RoleReader, s.boots)
	if o.Metrics != nil {
		s.route("GET /metrics", RoleReader, o.Metrics.ServeHTTP)
	}
	s.route("GET /v1/events", RoleReader, s.events)
	s.route("GET /v1/dmesg", RoleReader, s.dmesg)
	// A snapshot holds every key of the cluster, Kubernetes Secrets included: admin only.
	s.route("GET /v1/etcd/snapshots/{name}", RoleAdmin, s.etcdSnapshot)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})
	// A route without its doc is a defect TestOpenAPI catches; the node serves on without
	// the document rather than fail its boot.
	if s.openapi, s.openapiErr = openAPI(s.routes); s.openapiErr != nil {
		s.log.Error("api: no OpenAPI document", "err", s.openapiErr)
	}
	return s
}

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) {
	if s.openapiErr != nil {
		WriteError(w, http.StatusInternalServerError, "internal", s.openapiErr.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(s.openapi)
}

// route registers h behind the role check. Go's mux answers 405 itself for a known path
// with another method; that answer is not JSON, so every path also gets a JSON 405.
func (s *Server) route(pattern string, need Role, h http.HandlerFunc) {
	s.routes = append(s.routes, registered{pattern, need})
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		role := RoleNone
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			role = RoleOf(r.TLS.PeerCertificates[0])
		} else {
			// Unreachable with RequireAndVerifyClientCert; kept so a misconfigured listener
			// fails closed.
			WriteError(w, http.StatusUnauthorized, "unauthenticated", "a client certificate is required")
			return
		}
		if role < need {
			WriteError(w, http.StatusForbidden, "forbidden",
				fmt.Sprintf("%s %s needs role %s; the certificate grants %s", r.Method, r.URL.Path, need, role))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		// Every answer must be written within 30 s; streams push this out per line.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(30 * time.Second))
		h(w, r)
	})
	_, path, _ := strings.Cut(pattern, " ")
	if !s.methodRoutes[path] {
		s.methodRoutes[path] = true
		s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s does not take %s", path, r.Method))
		})
	}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	WriteJSON(w, http.StatusOK, s.node.Version())
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	WriteJSON(w, http.StatusOK, s.node.Status())
}

func (s *Server) reboot(w http.ResponseWriter, r *http.Request) {
	s.power(w, r, "rebooting", s.node.Reboot)
}

func (s *Server) shutdown(w http.ResponseWriter, r *http.Request) {
	s.power(w, r, "shutting down", s.node.Shutdown)
}

func (s *Server) power(w http.ResponseWriter, r *http.Request, what string, do func(string) error) {
	who := r.TLS.PeerCertificates[0].Subject.CommonName
	s.log.Info("api: power request", "action", what, "client", who, "remote", r.RemoteAddr)
	if err := do("api request from " + who); err != nil {
		WriteError(w, http.StatusConflict, "busy", err.Error())
		return
	}
	WriteJSON(w, http.StatusAccepted, Accepted{Status: what})
}

func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	var req UpgradeRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Image == "" {
		WriteError(w, http.StatusBadRequest, "bad_request", `"image" is required`)
		return
	}
	acc, err := s.node.StartUpgrade(req)
	if err != nil {
		writeNodeError(w, err)
		return
	}
	s.log.Info("api: upgrade accepted", "id", acc.ID, "image", req.Image, "preserve", req.Preserve, "stage", req.Stage, "client", r.TLS.PeerCertificates[0].Subject.CommonName)
	WriteJSON(w, http.StatusAccepted, acc)
}

func (s *Server) activateUpgrade(w http.ResponseWriter, r *http.Request) {
	var req ActivateRequest
	if r.ContentLength != 0 && !decodeBody(w, r, &req) {
		return
	}
	acc, err := s.node.ActivateUpgrade(req.ID)
	if err != nil {
		writeNodeError(w, err)
		return
	}
	s.log.Info("api: staged upgrade activated", "id", acc.ID, "client", r.TLS.PeerCertificates[0].Subject.CommonName)
	WriteJSON(w, http.StatusAccepted, acc)
}

func (s *Server) cancelUpgrade(w http.ResponseWriter, r *http.Request) {
	if err := s.node.CancelUpgrade(); err != nil {
		writeNodeError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, Accepted{Status: "cancelled"})
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	if err := s.node.Rollback(); err != nil {
		writeNodeError(w, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, Accepted{Status: "rolling back"})
}

func (s *Server) reset(w http.ResponseWriter, r *http.Request) {
	var req ResetRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if len(req.Wipe) == 0 {
		WriteError(w, http.StatusBadRequest, "bad_request", `"wipe" must name at least one of EPHEMERAL, STATE`)
		return
	}
	seen := map[string]bool{}
	for _, p := range req.Wipe {
		if !slices.Contains(Wipeable, p) || seen[p] {
			WriteError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("cannot wipe %q: name each of %v at most once", p, Wipeable))
			return
		}
		seen[p] = true
	}
	if err := s.node.Reset(req.Wipe); err != nil {
		writeNodeError(w, err)
		return
	}
	s.log.Info("api: reset accepted", "wipe", req.Wipe, "client", r.TLS.PeerCertificates[0].Subject.CommonName)
	WriteJSON(w, http.StatusAccepted, Accepted{Status: "resetting"})
}

func (s *Server) services(w http.ResponseWriter, r *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]any{"services": s.node.Services()})
}

func (s *Server) restartService(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.node.RestartService(name); err != nil {
		writeNodeError(w, err)
		return
	}
	WriteJSON(w, http.StatusAccepted, Accepted{Status: "restarting " + name})
}

// follow serves a ring: the last tail lines, then (with follow=1) every new one until the
// client leaves or the ring is closed at shutdown. wrap turns a stored line into a JSON
// value; nil means the lines are JSON already.
func (s *Server) follow(w http.ResponseWriter, r *http.Request, ring *events.Ring, defTail int, wrap func(string) any) {
	tail, ok := queryTail(r, defTail)
	follow, ok2 := queryFollow(r)
	if !ok || !ok2 {
		WriteError(w, http.StatusBadRequest, "bad_request", "tail must be 0-100000 and follow 0 or 1")
		return
	}
	write := func(lw *lineWriter, line string) error {
		if wrap == nil {
			return lw.raw(line)
		}
		return lw.value(wrap(line))
	}
	if !follow {
		lw := newLineWriter(w)
		if tail == 0 {
			return
		}
		for _, l := range ring.Tail(tail) {
			if write(lw, l) != nil {
				return
			}
		}
		return
	}
	if !s.acquireStream(w) {
		return
	}
	defer s.releaseStream()
	// Follow returns the history and the channel atomically: no line is lost or repeated
	// between the two.
	lines, ch, cancel := ring.Follow(max(tail, 1), 1024)
	defer cancel()
	if tail == 0 {
		lines = nil
	}
	lw := newLineWriter(w)
	for _, l := range lines {
		if write(lw, l) != nil {
			return
		}
	}
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				return // the node is shutting down: end the response cleanly
			}
			if write(lw, l) != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

// LogLine is one line of GET /v1/logs/{name}.
type LogLine struct {
	Line string `json:"line"`
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	back := 0
	if v := r.URL.Query().Get("boot"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n > 0 {
			WriteError(w, http.StatusBadRequest, "bad_request", "boot must be 0 (this boot) or negative (-1: the boot before this one; GET /v1/boots lists them)")
			return
		}
		back = n
	}
	if back == 0 {
		ring, err := s.node.LogRing(r.PathValue("name"))
		if err != nil {
			writeNodeError(w, err)
			return
		}
		s.follow(w, r, ring, 100, func(l string) any { return LogLine{Line: l} })
		return
	}
	tail, ok := queryTail(r, 100)
	follow, ok2 := queryFollow(r)
	if !ok || !ok2 || follow {
		WriteError(w, http.StatusBadRequest, "bad_request", "tail must be 0-100000; follow only for this boot (boot=0): an earlier boot's log does not grow")
		return
	}
	paths, err := s.node.PastLog(r.PathValue("name"), back)
	if err != nil {
		writeNodeError(w, err)
		return
	}
	// Reading a past log can take tens of MiB through PID 1: at most MaxStreams at once.
	if !s.acquireStream(w) {
		return
	}
	defer s.releaseStream()
	var lines []string
	if tail > 0 {
		if lines, err = journal.Tail(paths, tail); err != nil {
			writeNodeError(w, err)
			return
		}
	}
	lw := newLineWriter(w)
	for _, l := range lines {
		if lw.value(LogLine{Line: l}) != nil {
			return
		}
	}
}

// boots lists the boots whose logs are kept (GET /v1/logs/NAME?boot=N reads them).
func (s *Server) boots(w http.ResponseWriter, r *http.Request) {
	bs, err := s.node.Boots()
	if err != nil {
		writeNodeError(w, err)
		return
	}
	out := Boots{Boots: []BootLogs{}}
	for i, b := range bs {
		out.Boots = append(out.Boots, BootLogs{Boot: -i, BootID: b.BootID, Version: b.Info.Version, Slot: b.Info.Slot, Started: b.Info.Started, Logs: b.Logs, Bytes: b.Bytes})
	}
	WriteJSON(w, http.StatusOK, out)
}

// etcdSnapshot sends a saved snapshot, for `etcdutl snapshot restore` elsewhere.
func (s *Server) etcdSnapshot(w http.ResponseWriter, r *http.Request) {
	f, err := s.node.EtcdSnapshot(r.PathValue("name"))
	if err != nil {
		writeNodeError(w, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		writeNodeError(w, err)
		return
	}
	// A database of gigabytes takes longer than the usual 30 s to send.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Hour))
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, st.Name(), st.ModTime(), f)
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	s.follow(w, r, s.node.Events(), 100, nil)
}

func (s *Server) dmesg(w http.ResponseWriter, r *http.Request) {
	follow, ok := queryFollow(r)
	if !ok {
		WriteError(w, http.StatusBadRequest, "bad_request", "follow must be 0 or 1")
		return
	}
	if follow {
		if !s.acquireStream(w) {
			return
		}
		defer s.releaseStream()
	}
	lw := newLineWriter(w)
	err := s.node.Dmesg(r.Context(), follow, lw.value)
	if err != nil && r.Context().Err() == nil {
		s.log.Debug("api: dmesg stream ended", "err", err)
	}
}

// decodeBody decodes one JSON object strictly, answering 400 itself on failure.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		WriteError(w, http.StatusBadRequest, "bad_request", "body: "+err.Error())
		return false
	}
	if dec.More() {
		WriteError(w, http.StatusBadRequest, "bad_request", "body: more than one JSON value")
		return false
	}
	return true
}

func writeNodeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrBadRequest):
		WriteError(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, ErrConflict):
		WriteError(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, ErrNotFound):
		WriteError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ErrStaleStaged):
		WriteError(w, http.StatusPreconditionFailed, "stale_staged", err.Error())
	case errors.Is(err, ErrPrecondition):
		WriteError(w, http.StatusPreconditionFailed, "precondition_failed", err.Error())
	default:
		WriteError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

// ClientTLS is a client's side of the endpoint's mTLS: it trusts the nodes' CA (caPEM) and
// presents certPEM/keyPEM, whose subject organization is its role.
func ClientTLS(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("netapi: no CA certificate in PEM")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("netapi: client key pair: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// WriteJSON writes v as the JSON body with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing left to tell it
}

// WriteError writes the uniform error body.
func WriteError(w http.ResponseWriter, code int, errCode, msg string) {
	WriteJSON(w, code, ErrorBody{Error: ErrorDetail{Code: errCode, Message: msg}})
}

// TLSConfig is the server side of mTLS: our certificate, and clients must present one signed
// by the CA. A client without one, or with one from another CA, fails the handshake.
func TLSConfig(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("netapi: no CA certificate in PEM")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("netapi: server key pair: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// Serve serves the API on ln with TLS until ln is closed. Timeouts bound slow clients; write
// timeouts are left to each handler so that streams can last.
func Serve(ln net.Listener, h http.Handler, cfg *tls.Config, log *slog.Logger) (*http.Server, <-chan error) {
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         cfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(ln, cfg)) }()
	return srv, done
}
