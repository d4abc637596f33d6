package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"

	"keel/netapi/client"
	"keel/upgrade"
)

// explain turns an error into what happened, what it means and how to fix it, with the exit
// code: 1 when the node answered (a refusal, a failed upgrade), 3 when it did not.
func explain(err error, k *cli) (string, int) {
	var ne *client.NodeError
	var uf *upgradeFailed
	var nr *notInRecord
	ep, cert, ca := k.ctx.Endpoint, k.ctx.Cert, k.ctx.CA
	switch {
	case errors.As(err, &uf) && uf.u.State == upgrade.RolledBack:
		return fmt.Sprintf("%v\n  the node is back on %s; why the new slot failed, in its log: keelctl logs init --boot -1 (the trial's boot)", err, orDash(uf.u.FromVersion)), exitFailed
	case errors.As(err, &uf):
		return fmt.Sprintf("%v\n  nothing was committed: the node still runs %s (keelctl status, keelctl logs init)", err, orDash(uf.u.FromVersion)), exitFailed
	case errors.As(err, &nr):
		return err.Error(), exitFailed
	case errors.As(err, &ne):
		msg := fmt.Sprintf("the node refused: %d %s: %s", ne.Status, ne.Code, ne.Msg)
		switch ne.Status {
		case http.StatusForbidden:
			msg += fmt.Sprintf("\n  fix: use a context whose certificate has that role (this one, %q, uses %s); `make pki` writes admin, operator and reader certificates and a context for each", k.name, cert)
		case http.StatusConflict:
			msg += "\n  the node is busy with something else: keelctl status says what"
		case http.StatusPreconditionFailed:
			msg += "\n  a check refused it; --force skips the etcd quorum check (at the cluster's risk)"
		}
		return msg, exitFailed
	}
	var ua x509.UnknownAuthorityError
	var cv *tls.CertificateVerificationError
	var hn x509.HostnameError
	var alert tls.AlertError
	switch {
	case errors.As(err, &hn):
		return fmt.Sprintf("the node's certificate is not for %s (%v)\n  fix: reach the node by a name or address its certificate has, or reissue it (make pki writes one for 127.0.0.1 and 10.0.2.15)", ep, hn), exitNoReach
	case errors.As(err, &ua) || errors.As(err, &cv) && errors.As(cv.Err, &ua):
		return fmt.Sprintf("the node at %s presented a certificate not signed by the CA in %s\n  fix: the context's ca must be the node's CA (build/pki/ca.crt for a dev node), or this is not the node you meant", ep, ca), exitNoReach
	case errors.As(err, &alert) || strings.Contains(err.Error(), "remote error: tls:"):
		return fmt.Sprintf("the node at %s refused this client certificate (%s): %v\n  fix: the certificate must be issued by the node's CA (build/pki/*.crt for a dev node)", ep, cert, err), exitNoReach
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("cannot reach %s: connection refused\n  fix: is the node up, and its endpoint forwarded to this address? (`make run` forwards 127.0.0.1:50000; -e HOST:PORT picks another)", ep), exitNoReach
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return fmt.Sprintf("no answer from %s in time: %v\n  fix: is the node up (a reboot takes a while)? --timeout waits longer", ep, err), exitNoReach
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		return fmt.Sprintf("cannot reach %s: %v\n  fix: check the address and the route to it", ep, err), exitNoReach
	case errors.Is(err, os.ErrNotExist):
		return fmt.Sprintf("%v\n  fix: the context %q names a file that is not there", err, k.name), exitUsage
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return fmt.Sprintf("cannot resolve %s: %v", ep, err), exitNoReach
	}
	return err.Error(), exitNoReach
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
