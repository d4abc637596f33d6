package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	etcdnode "keel/cluster/etcd"
	"keel/config"
	"keel/internal/testenv/etcdtest"
)

// TestPrecheckFrozenLeader: the request-time check with the leader frozen just before it, in
// a cluster that elects as slowly as three emulated nodes do (heartbeat 300 ms, election
// 3 s). The answer is the refusal naming the frozen member. When the lock holder's read and
// the check shared one deadline and went through the shared client (which may pick the
// frozen member's open connection), the election ate the deadline and the verdict was lost:
// e2e TestControlPlaneRollingUpgrade was answered "context deadline exceeded".
func TestPrecheckFrozenLeader(t *testing.T) {
	c := etcdtest.StartWith(t, 3, etcdtest.Options{HeartbeatMS: 300, ElectionMS: 3000})
	for round := range 4 {
		cli := c.Client()
		l := leader(t, c, cli)
		var self *etcdtest.Member
		for _, m := range c.Members {
			if m != l {
				self = m
				break
			}
		}
		n := etcdnode.NewNode(etcdnode.NodeOptions{Name: self.Name, Files: self.Files, Config: config.Etcd{
			ClientURL: self.ClientURL, PeerURL: self.PeerURL, Endpoints: c.Endpoints(),
			ProbeTimeoutS: 2, HeartbeatMS: 300, ElectionMS: 3000}})
		c.Pause(l)
		t0 := time.Now()
		_, _, err := n.Precheck(context.Background(), true, false)
		took := time.Since(t0)
		c.Resume(l)
		want := fmt.Sprintf("restarting %s leaves 1 of 3 voters healthy, quorum 2; unhealthy voters: %s", self.Name, l.Name)
		if !errors.Is(err, etcdnode.ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Fatalf("round %d, precheck of %s with the leader %s frozen: %v, want a refusal saying %q", round, self.Name, l.Name, err, want)
		}
		t.Logf("round %d: %s refused in %v: %v", round, self.Name, took.Round(time.Millisecond), err)
		c.WaitHealthy(l, 30*time.Second)
	}
}
