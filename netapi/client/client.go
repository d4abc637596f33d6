// Package client is the Go client of a node's keel endpoint (netapi): mTLS with a client
// certificate whose organization is its role, JSON calls, NDJSON streams. keel-controller
// reaches its nodes with it, keelctl its operator's.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"keel/events"
	"keel/netapi"
)

// Client reaches nodes' keel endpoints over mTLS with one client certificate (the controller's
// is an admin: it starts upgrades). Nodes are named; Addr says where each one answers.
type Client struct {
	HTTP *http.Client
	// Stream follows event streams: the same transport, no overall timeout.
	StreamHTTP *http.Client
	// Addr is a node's endpoint, host:port (from its Node object's addresses).
	Addr func(node string) (string, error)
}

// NewClient trusts the nodes' CA and presents certPEM/keyPEM.
func NewClient(caPEM, certPEM, keyPEM []byte, addr func(string) (string, error)) (*Client, error) {
	cfg, err := netapi.ClientTLS(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	// One kept connection per node (a pass asks each node once): the default pool keeps 100
	// in all, and a thousand-node fleet would pay a TLS handshake per node per pass.
	tr := &http.Transport{TLSClientConfig: cfg, ResponseHeaderTimeout: 15 * time.Second, MaxIdleConns: 0, MaxIdleConnsPerHost: 2, IdleConnTimeout: 5 * time.Minute}
	return &Client{Addr: addr, HTTP: &http.Client{Timeout: 15 * time.Second, Transport: tr}, StreamHTTP: &http.Client{Transport: tr}}, nil
}

// NodeError is a node's error answer: its HTTP status and the endpoint's code and message.
type NodeError struct {
	Node   string
	Status int
	Code   string
	Msg    string
}

func (e *NodeError) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.Node, e.Status, e.Code, e.Msg)
}

// ErrNodeBusy is a node that refused an upgrade because one runs (409).
var ErrNodeBusy = errors.New("an upgrade is in progress on the node")

func (e *NodeError) Unwrap() error {
	if e.Status == http.StatusConflict {
		return ErrNodeBusy
	}
	return nil
}

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context, node string) (netapi.Status, error) {
	var st netapi.Status
	err := c.call(ctx, node, http.MethodGet, "/v1/status", nil, http.StatusOK, &st)
	return st, err
}

// Upgrade is POST /v1/upgrade; it returns the upgrade's id.
func (c *Client) Upgrade(ctx context.Context, node string, req netapi.UpgradeRequest) (string, error) {
	var acc netapi.UpgradeAccepted
	if err := c.call(ctx, node, http.MethodPost, "/v1/upgrade", req, http.StatusAccepted, &acc); err != nil {
		return "", err
	}
	return acc.ID, nil
}

// Activate is POST /v1/upgrade/activate: the node's staged upgrade id goes on (409 if
// another one is staged by now).
func (c *Client) Activate(ctx context.Context, node, id string) (string, error) {
	var acc netapi.UpgradeAccepted
	if err := c.call(ctx, node, http.MethodPost, "/v1/upgrade/activate", netapi.ActivateRequest{ID: id}, http.StatusAccepted, &acc); err != nil {
		return "", err
	}
	return acc.ID, nil
}

// Cancel is POST /v1/upgrade/cancel: the node's staged upgrade (or one still pulling) ends.
func (c *Client) Cancel(ctx context.Context, node string) error {
	var acc netapi.Accepted
	return c.call(ctx, node, http.MethodPost, "/v1/upgrade/cancel", nil, http.StatusOK, &acc)
}

// Follow streams the node's last event and every new one (GET /v1/events?follow=1&tail=1) to
// fn until ctx ends or the stream does: a node that reboots ends it (cleanly at its shutdown,
// or by a dropped connection).
func (c *Client) Follow(ctx context.Context, node string, fn func(events.Event)) error {
	return c.Stream(ctx, node, "/v1/events?follow=1&tail=1", func(line []byte) error {
		var ev events.Event
		if json.Unmarshal(line, &ev) == nil {
			fn(ev)
		}
		return nil
	})
}

// Stream calls fn with each line of an NDJSON answer (GET path) until it ends, ctx ends, or
// fn returns an error (which Stream returns).
func (c *Client) Stream(ctx context.Context, node, path string, fn func(line []byte) error) error {
	addr, err := c.Addr(node)
	if err != nil {
		return fmt.Errorf("%s: endpoint: %w", node, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+path, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	resp, err := c.StreamHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var eb netapi.ErrorBody
		json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&eb)
		return &NodeError{Node: node, Status: resp.StatusCode, Code: eb.Error.Code, Msg: eb.Error.Message}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("%s: %s: %w", node, path, err)
	}
	return nil
}

// Call makes one JSON call: body (nil: none) is sent as JSON, an answer with status want is
// decoded into out (nil: ignored), any other is a *NodeError.
func (c *Client) Call(ctx context.Context, node, method, path string, body any, want int, out any) error {
	return c.call(ctx, node, method, path, body, want, out)
}

func (c *Client) call(ctx context.Context, node, method, path string, body any, want int, out any) error {
	addr, err := c.Addr(node)
	if err != nil {
		return fmt.Errorf("%s: endpoint: %w", node, err)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+path, rd)
	if err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s: %s %s: %w", node, method, path, err)
	}
	if resp.StatusCode != want {
		var eb netapi.ErrorBody
		json.Unmarshal(b, &eb)
		return &NodeError{Node: node, Status: resp.StatusCode, Code: eb.Error.Code, Msg: eb.Error.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s: %s %s: %w", node, method, path, err)
	}
	return nil
}
