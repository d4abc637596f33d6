package controller

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

// Client reaches nodes' keel endpoints over mTLS with the controller's client certificate
// (an admin role: it starts upgrades). It implements Nodes.
type Client struct {
	HTTP *http.Client
	// Stream follows event streams: the same transport, no overall timeout.
	Stream *http.Client
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
	return &Client{Addr: addr, HTTP: &http.Client{Timeout: 15 * time.Second, Transport: tr}, Stream: &http.Client{Transport: tr}}, nil
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
// fn until ctx ends or the stream does: a node that reboots ends it (cleanly at its shutdown, or by a dropped
// connection).
func (c *Client) Follow(ctx context.Context, node string, fn func(events.Event)) error {
	addr, err := c.Addr(node)
	if err != nil {
		return fmt.Errorf("%s: endpoint: %w", node, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/v1/events?follow=1&tail=1", nil)
	if err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	resp, err := c.Stream.Do(req)
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
		var ev events.Event
		if json.Unmarshal(sc.Bytes(), &ev) == nil {
			fn(ev)
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("%s: events: %w", node, err)
	}
	return nil
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
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s: %s %s: %w", node, method, path, err)
	}
	return nil
}
