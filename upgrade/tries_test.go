package upgrade

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"keel/boot"
)

// actionIndex is the index (as crash points count them) of the first action logged with
// prefix, or -1.
func actionIndex(log []string, prefix string) int {
	k := 0
	for _, l := range log {
		if !strings.Contains(l, "[") {
			continue // a boot, a panic, a failed META write: not an action
		}
		if strings.HasPrefix(l, prefix) {
			return k
		}
		k++
	}
	return -1
}

// healthy says whether the scenario's upgrade can end done: nothing in it fails for good.
func (s scenario) healthy() bool {
	return !(s.broken || s.unhealthy || s.pullFails || s.writeFails || s.stopFails || (s.drainFails && !s.force) || s.checkFails || s.leaveFails || (s.snapFails && !s.force) || s.commitFails)
}

// TestCutDuringTrialEndsDone: the invariant boot tries exist for. A power cut anywhere in the
// trial of a healthy new slot (before, during or after its gates) costs one of GRUB's tries,
// the trial resumes on the new slot and the upgrade ends done, the record saying it took two
// trial boots. Two cuts, one in each trial boot, spend both tries: rolled back, saying so.
func TestCutDuringTrialEndsDone(t *testing.T) {
	if boot.TrialTries != 2 {
		t.Fatalf("TrialTries = %d: this test's second cut assumes 2", boot.TrialTries)
	}
	// Every try and the boot back to the old slot fit in the upgrade's bound on boots.
	if boot.TrialTries+1 > MaxBoots {
		t.Fatalf("TrialTries %d + the fallback boot > MaxBoots %d", boot.TrialTries, MaxBoots)
	}
	for _, s := range scenarios {
		if !s.healthy() {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			w := newWorld(t, s)
			w.run(t, nil)
			k := actionIndex(w.log, "trial[trial]")
			if k < 0 {
				t.Fatalf("no trial action in %v", w.log)
			}
			for _, m := range []string{"before", "during", "after"} {
				w := newWorld(t, s)
				r := w.run(t, []crash{{k, m}})
				desc := fmt.Sprintf("%s: cut %s the trial (action %d)", s.name, m, k)
				check(t, s, w, r, desc)
				if u := r.Current; u.State != Done || u.TrialBoots != 2 {
					t.Fatalf("%s: %s after %d trial boots (%s), want done after 2; log %v", desc, u.State, u.TrialBoots, u.Reason, w.log)
				}
				// The second trial: cut it too.
				w2 := newWorld(t, s)
				log := w.log
				second := -1
				for i, n := 0, 0; i < len(log); i++ {
					if !strings.Contains(log[i], "[") {
						continue
					}
					if strings.HasPrefix(log[i], "trial[trial]") && n > k {
						second = n
						break
					}
					n++
				}
				if second < 0 {
					t.Fatalf("%s: no second trial in %v", desc, log)
				}
				r2 := w2.run(t, []crash{{k, m}, {second, "during"}})
				check(t, s, w2, r2, desc+", and the second trial")
				if u := r2.Current; u.State != RolledBack || !strings.Contains(u.Reason, "GRUB spent its 2 boot tries; 2 reached the init, none finished") || w2.boots < 3 {
					t.Fatalf("%s, and the second trial: %s %q after %d boots; log %v", desc, u.State, u.Reason, w2.boots, w2.log)
				}
			}
		})
	}
}

// TestLeftoverTry: a boot of the new slot after its upgrade ended (a try left by a cut before
// the disarm) is sent back to the committed slot, once; not after an operator rollback to it.
func TestLeftoverTry(t *testing.T) {
	now := time.Unix(1000, 0)
	ended := Record{Current: &Upgrade{ID: "u", State: RolledBack, FromSlot: boot.SlotA, ToSlot: boot.SlotB, FinishedAt: now}}
	r, acts, err := Step(ended, Booted{Slot: boot.SlotB, Committed: boot.SlotA, Now: now})
	if err != nil || len(acts) != 2 || acts[0] != (ActDisarm{}) || !r.Current.SentBack {
		t.Fatalf("first leftover boot: %v %v, sent back %v", acts, err, r.Current.SentBack)
	}
	if _, acts, _ := Step(r, Booted{Slot: boot.SlotB, Committed: boot.SlotA, Now: now}); len(acts) != 0 {
		t.Fatalf("second leftover boot sent back again: %v (a loop if grubenv cannot be written)", acts)
	}
	rolled := ended.Clone()
	rolled.Rollbacks = []Rollback{{From: boot.SlotA, To: boot.SlotB, At: now.Add(time.Minute)}}
	if _, acts, _ := Step(rolled, Booted{Slot: boot.SlotB, Committed: boot.SlotA, Now: now}); len(acts) != 0 {
		t.Fatalf("a boot after a rollback to the slot was sent back: %v", acts)
	}
	if _, acts, _ := Step(ended, Booted{Slot: boot.SlotA, Committed: boot.SlotA, Now: now}); len(acts) != 0 {
		t.Fatalf("a boot of the committed slot: %v", acts)
	}
}
