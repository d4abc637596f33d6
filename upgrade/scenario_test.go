package upgrade

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"keel/boot"
)

// TestScenarios runs the scripts in testdata/ (the etcd/raft datadriven style): each line is an
// event for Step, and below it the record and the actions Step answers with (a value with
// spaces is written key=(words)). They are the main
// flows written down to be read; `go test ./upgrade -run TestScenarios -rewrite` regenerates the
// expectations after a deliberate change (then read the diff).
//
//	request id=u1 image=r/i:v2 [preserve=false] [force] [cp] [booted=A] [committed=A]
//	pulled [version=v2]        granted lease=N       waiting holder=H     checked [reason=R]
//	cordoned ours|foreign|skipped                    completed            failed reason=R
//	health ok | health reason=R                      boot slot=S committed=S
//	cancel                     lease-lost [lease=N] reason=R              persist-failed reason=R
//	uncordoned  released  rejoined [note=N]  noted [note=N]  wiped   progress written=N total=N
//	rollback booted=S   rollback-verified [version=V]   rollback-refused reason=R
//	rollback-committed  rollback-failed reason=R
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var r Record
		now := time.Unix(1000, 0).UTC()
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			ev, err := scenarioEvent(d, now)
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
			n, acts, err := Step(r, ev)
			if err != nil {
				return "error: " + err.Error() + "\n" + describe(r)
			}
			r = n
			return describe(r) + describeActions(acts)
		})
	})
}

func scenarioEvent(d *datadriven.TestData, now time.Time) (Event, error) {
	arg := func(key, def string) string {
		for _, a := range d.CmdArgs {
			if a.Key == key {
				if len(a.Vals) == 0 {
					return "true"
				}
				return strings.Join(a.Vals, ", ") // key=(words, more words)
			}
		}
		return def
	}
	num := func(key string) int64 {
		var v int64
		fmt.Sscan(arg(key, "0"), &v)
		return v
	}
	slot := func(key, def string) boot.Slot { return boot.Slot(arg(key, def)) }
	switch d.Cmd {
	case "request":
		return Request{ID: arg("id", "u1"), Image: arg("image", "r/i:v2"), Preserve: arg("preserve", "true") == "true",
			Force: arg("force", "") == "true", Stage: arg("stage", "") == "true", FromVersion: "v1", Booted: slot("booted", "A"), Committed: slot("committed", ""),
			ControlPlane: arg("cp", "") == "true", Member: "n1", Now: now}, nil
	case "pulled":
		return Pulled{Digest: "sha256:d", ToVersion: arg("version", "v2"), SlotSHA256: "s", SlotSize: 10, Now: now}, nil
	case "granted":
		return LeaseGranted{ID: num("lease"), Now: now}, nil
	case "waiting":
		return LockWaiting{Holder: arg("holder", "n2 since T"), Now: now}, nil
	case "checked":
		return Checked{Reason: arg("reason", "ok"), Now: now}, nil
	case "cordoned":
		return Cordoned{Ours: d.HasArg("ours"), Skipped: d.HasArg("skipped"), Now: now}, nil
	case "completed":
		return Completed{Now: now}, nil
	case "failed":
		return Failed{Reason: arg("reason", "boom"), Now: now}, nil
	case "health":
		return Health{OK: d.HasArg("ok"), Reason: arg("reason", ""), Now: now}, nil
	case "boot":
		return Booted{Slot: slot("slot", "A"), Committed: slot("committed", "A"), Now: now}, nil
	case "cancel":
		return Cancel{Reason: "by operator", Now: now}, nil
	case "activate":
		return Activate{Now: now}, nil
	case "lease-lost":
		return LeaseLost{Lease: num("lease"), Reason: arg("reason", "expired"), Now: now}, nil
	case "persist-failed":
		return PersistFailed{Reason: arg("reason", "EIO"), Now: now}, nil
	case "uncordoned":
		return Uncordoned{Now: now}, nil
	case "wiped":
		return Wiped{Now: now}, nil
	case "released":
		return Released{Now: now}, nil
	case "rejoined":
		return Rejoined{Note: arg("note", "promoted"), Now: now}, nil
	case "noted":
		return EtcdNoted{Note: arg("note", "snapshot saved"), Now: now}, nil
	case "progress":
		return Progressed{Written: num("written"), Total: num("total"), Now: now}, nil
	case "rollback":
		return RollbackRequest{Booted: slot("booted", "A"), Now: now}, nil
	case "rollback-verified":
		return RollbackVerified{Version: arg("version", "v0"), Now: now}, nil
	case "rollback-refused":
		return RollbackRefused{Reason: arg("reason", "no image"), Now: now}, nil
	case "rollback-committed":
		return RollbackCommitted{Now: now}, nil
	case "rollback-failed":
		return RollbackFailed{Reason: arg("reason", "EIO"), Now: now}, nil
	}
	return nil, fmt.Errorf("unknown command %q", d.Cmd)
}

// describe is the part of the record a scenario reads: where the upgrade is, why, what it
// still owes, what each slot holds, a rollback in flight.
func describe(r Record) string {
	var b strings.Builder
	if u := r.Current; u == nil {
		b.WriteString("no upgrade\n")
	} else {
		fmt.Fprintf(&b, "%s %s (%s→%s, slot %s→%s, boots %d)\n", u.ID, u.State, u.FromVersion, u.ToVersion, u.FromSlot, u.ToSlot, u.Boots)
		for _, f := range []struct{ k, v string }{{"reason", u.Reason}, {"warning", u.Warning}, {"kubernetes", u.Kubernetes}, {"lock", u.Lock}, {"etcd", u.Etcd}} {
			if f.v != "" {
				fmt.Fprintf(&b, "  %s: %s\n", f.k, f.v)
			}
		}
		var owes []string
		if u.Wipe {
			owes = append(owes, "wipe")
		}
		if u.Rejoin {
			owes = append(owes, "rejoin")
		}
		if u.Uncordon {
			owes = append(owes, "uncordon")
		}
		if u.Lease != 0 {
			owes = append(owes, fmt.Sprintf("lease %d", u.Lease))
		}
		if len(owes) > 0 {
			fmt.Fprintf(&b, "  owes: %s\n", strings.Join(owes, ", "))
		}
	}
	for _, s := range []boot.Slot{boot.SlotA, boot.SlotB} {
		if sr, ok := r.Slots[s]; ok {
			fmt.Fprintf(&b, "  slot %s: version %q verified %v\n", s, sr.Version, sr.Verified)
		}
	}
	if rb := r.RollingBack; rb != nil {
		fmt.Fprintf(&b, "  rolling back %s→%s: %s\n", rb.From, rb.To, rb.Phase)
	}
	if len(r.Rollbacks) > 0 {
		fmt.Fprintf(&b, "  rollbacks: %d, last %s→%s (%s)\n", len(r.Rollbacks), r.Rollbacks[0].From, r.Rollbacks[0].To, r.Rollbacks[0].Version)
	}
	return b.String()
}

func describeActions(acts []Action) string {
	if len(acts) == 0 {
		return "actions: none\n"
	}
	var s []string
	for _, a := range acts {
		d := fmt.Sprintf("%#v", a) // upgrade.ActPull{Image:"r/i:v2", Slot:"B"}
		d = d[strings.Index(d, "{"):]
		if d == "{}" {
			s = append(s, a.String())
		} else {
			s = append(s, a.String()+" "+d)
		}
	}
	return "actions: " + strings.Join(s, "; ") + "\n"
}
