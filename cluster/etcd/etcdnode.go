// Package etcdnode is a control-plane node's side of etcd: measuring the members for the
// pre-upgrade quorum check, the cluster-wide upgrade lease, leaving the cluster and rejoining
// it as a learner. Every function talks to a real cluster through go.etcd.io/etcd/client/v3;
// the arithmetic lives in package quorum, the order of things in package upgrade.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"keel/cluster/etcd/quorum"
)

// Connect returns a client for the given client URLs, with TLS (a client certificate) for
// https:// ones; tlsCfg is nil for an insecure cluster. It does not dial: the first call does,
// bounded by its context.
func Connect(endpoints []string, tlsCfg *tls.Config) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		DialTimeout: 3 * time.Second,
		Logger:      zap.NewNop(), // errors come back to the caller, who logs them with context
		// The default keep-alive timeout is DialTimeout+1s: a lease keep-alive that stalls
		// longer moves on to another endpoint.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// Member is one member as the pre-upgrade check measured it.
type Member struct {
	quorum.Member
	ID         uint64   `json:"id"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
	// Error says why the member counts as unhealthy.
	Error string `json:"error,omitempty"`
}

// List returns the members, with names for members that have not started yet (etcd leaves
// them empty) made from their peer URLs, so that a refusal can name them.
func List(ctx context.Context, cli *clientv3.Client) ([]Member, error) {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd: member list: %w", err)
	}
	return members(resp.Members), nil
}

// members are the list's members by name.
func members(list []*pb.Member) []Member {
	var out []Member
	for _, m := range list {
		name := m.Name
		if name == "" {
			name = fmt.Sprintf("(unstarted %v)", m.PeerURLs)
		}
		out = append(out, Member{Member: quorum.Member{Name: name, Learner: m.IsLearner}, ID: m.ID, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Probe lists the members and measures each, all at once: a voter is healthy when a
// linearizable read sent to its own client URLs answers within timeout (it needs the member,
// a leader and a quorum behind it); a learner, which serves no linearizable reads, when its
// status answers. A member with no client URL (not started) is unhealthy.
func Probe(ctx context.Context, cli *clientv3.Client, timeout time.Duration) ([]Member, error) {
	ms, err := List(ctx, cli)
	if err != nil {
		return nil, err
	}
	return probe(ctx, cli, ms, timeout), nil
}

// probe measures ms at once. A member whose answer the end of ctx cut short is unhealthy
// like one that timed out: the verdict names who did not answer instead of being lost.
func probe(ctx context.Context, cli *clientv3.Client, ms []Member, timeout time.Duration) []Member {
	errs := make([]error, len(ms))
	done := make(chan struct{})
	for i := range ms {
		go func() {
			defer func() { done <- struct{}{} }()
			errs[i] = probeOne(ctx, cli, ms[i], timeout)
		}()
	}
	for range ms {
		<-done
	}
	for i := range ms {
		ms[i].Healthy = errs[i] == nil
		if errs[i] != nil {
			ms[i].Error = errs[i].Error()
		}
	}
	return ms
}

func probeOne(ctx context.Context, cli *clientv3.Client, m Member, timeout time.Duration) error {
	if len(m.ClientURLs) == 0 {
		return errors.New("not started (no client URL)")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	if m.Learner {
		_, err = cli.Status(ctx, m.ClientURLs[0])
	} else {
		var conn *grpc.ClientConn
		if conn, err = cli.Dial(m.ClientURLs[0]); err != nil {
			return err
		}
		defer conn.Close()
		// Linearizable: goes through the leader's ReadIndex.
		_, err = clientv3.NewKVFromKVClient(pb.NewKVClient(conn), nil).Get(ctx, "/keel/health-probe")
	}
	if err != nil {
		return fmt.Errorf("no answer within %v: %w", timeout, err)
	}
	return nil
}

// QuorumMembers is the arithmetic's view of measured members.
func QuorumMembers(ms []Member) []quorum.Member {
	out := make([]quorum.Member, len(ms))
	for i, m := range ms {
		out[i] = m.Member
	}
	return out
}

// Membership is how the cluster knows a node's member.
type Membership int

// Memberships.
const (
	Absent  Membership = iota // not in the member list
	Learner                   // a non-voting learner
	Voter                     // a voting member
)

func (m Membership) String() string {
	return [...]string{"absent", "learner", "voter"}[m]
}

// Find returns how the member named name (or, for one not started yet, with peerURL) is known.
func Find(ms []Member, name, peerURL string) (Member, Membership) {
	for _, m := range ms {
		if m.Name == name || (peerURL != "" && slices.Contains(m.PeerURLs, peerURL)) {
			if m.Learner {
				return m, Learner
			}
			return m, Voter
		}
	}
	return Member{}, Absent
}

// retryable reports whether a membership change may succeed if tried again shortly: the
// cluster refuses reconfiguration for a few seconds after a member (re)connects.
func retryable(err error) bool {
	return errors.Is(err, rpctypes.ErrUnhealthy) || errors.Is(err, rpctypes.ErrStopped) ||
		errors.Is(err, rpctypes.ErrMemberLearnerNotReady) || errors.Is(err, rpctypes.ErrTimeout) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, context.DeadlineExceeded) || errors.As(err, new(transient))
}

// transient marks an error worth retrying that retryable would not recognise (a member list
// that failed while the cluster changes).
type transient struct{ error }

func (t transient) Unwrap() error { return t.error }

// retry calls try every 500 ms while it fails with an error the cluster may get over
// (retryable). It returns nil, try's first other error, or the end of ctx with the last error.
func retry(ctx context.Context, what string, try func() error) error {
	for {
		err := try()
		if err == nil {
			return nil
		}
		if !retryable(err) {
			return fmt.Errorf("etcd: %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd: %s: gave up: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Remove removes the member named name. It is sent through the other members' endpoints: a
// member removing itself through its own endpoint can be answered "server stopped" although
// the removal was applied. Retried every 500 ms while the cluster reports itself unhealthy;
// a member that is not (or no longer) there counts as removed.
func Remove(ctx context.Context, cli *clientv3.Client, name string) error {
	return retry(ctx, "remove member "+name, func() error {
		if err := removeOnce(ctx, cli, name); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
			return err
		}
		return nil
	})
}

func removeOnce(ctx context.Context, cli *clientv3.Client, name string) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ms, err := List(lctx, cli)
	if err != nil {
		return err
	}
	me, how := Find(ms, name, "")
	if how == Absent {
		return nil
	}
	var others []string
	for _, m := range ms {
		if m.ID != me.ID {
			others = append(others, m.ClientURLs...)
		}
	}
	if len(others) == 0 {
		_, err = cli.MemberRemove(lctx, me.ID)
		return err
	}
	// The first other member that answers decides; one that is down, or cannot serve the
	// change now, gets 3 s and is skipped (the caller retries the round).
	for _, ep := range others {
		if err = removeVia(ctx, cli, ep, me.ID); err == nil || !(retryable(err) || status.Code(err) == codes.Unavailable) {
			return err
		}
	}
	return err
}

func removeVia(ctx context.Context, cli *clientv3.Client, ep string, id uint64) error {
	conn, err := cli.Dial(ep)
	if err != nil {
		return transient{err}
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = clientv3.NewClusterFromClusterClient(pb.NewClusterClient(conn), nil).MemberRemove(ctx, id)
	return err
}

// AddLearner makes sure a learner with peerURL exists (an earlier attempt, cut short, may have
// added it already) and returns the --initial-cluster value its etcd must start with.
func AddLearner(ctx context.Context, cli *clientv3.Client, name, peerURL string) (string, error) {
	ms, err := List(ctx, cli)
	if err != nil {
		return "", err
	}
	me, how := Find(ms, name, peerURL)
	switch how {
	case Voter:
		return "", fmt.Errorf("etcd: %s is still a voting member (id %x)", name, me.ID)
	case Absent:
		err := retry(ctx, fmt.Sprintf("add learner %s (%s)", name, peerURL), func() error {
			_, err := cli.MemberAddAsLearner(ctx, []string{peerURL})
			return err
		})
		if err != nil {
			return "", err
		}
		if ms, err = List(ctx, cli); err != nil {
			return "", err
		}
	}
	return InitialCluster(ms, name, peerURL), nil
}

// InitialCluster is the --initial-cluster value for a member joining ms as name at peerURL:
// every started member with its peer URLs, and this one.
func InitialCluster(ms []Member, name, peerURL string) string {
	var parts []string
	for _, m := range ms {
		if slices.Contains(m.PeerURLs, peerURL) || m.Name == name {
			continue
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, m.Name+"="+u)
		}
	}
	parts = append(parts, name+"="+peerURL)
	sort.Strings(parts)
	s := ""
	for i, p := range parts {
		if i > 0 {
			s += ","
		}
		s += p
	}
	return s
}

// Promote promotes the learner named name (or with peerURL, if it has not published its name
// yet) once it is in sync with the leader (etcd refuses until then: retried every 500 ms). A
// member that is already a voter counts as promoted.
func Promote(ctx context.Context, cli *clientv3.Client, name, peerURL string) error {
	return retry(ctx, "promote "+name, func() error {
		ms, err := List(ctx, cli)
		if err != nil {
			return transient{err}
		}
		me, how := Find(ms, name, peerURL)
		switch how {
		case Voter:
			return nil
		case Absent:
			return errors.New("not a member")
		}
		if _, err := cli.MemberPromote(ctx, me.ID); err != nil && !errors.Is(err, rpctypes.ErrMemberNotLearner) {
			return err
		}
		return nil
	})
}

// WaitHealthy waits until the member at endpoint is back, healthy and caught up: a
// linearizable read through it answers. etcd serves such a read only after the member has
// applied everything the leader had committed when the read arrived (ReadIndex), so an answer
// means caught up, not merely running.
func WaitHealthy(ctx context.Context, endpoint string, tlsCfg *tls.Config) error {
	c, err := Connect([]string{endpoint}, tlsCfg)
	if err != nil {
		return err
	}
	defer c.Close()
	for {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := c.Get(rctx, "/keel/health-probe")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd member at %s not healthy: %w (last: %v)", endpoint, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
