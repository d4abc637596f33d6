package boot

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnvRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		vars map[string]string
	}{
		{"empty", nil},
		{"commit", map[string]string{KeySavedEntry: "B"}},
		{"trial cleared", map[string]string{KeySavedEntry: "A", KeyNextEntry: "", KeyTrialTries: ""}},
		{"escapes", map[string]string{"x": "a\\b\nc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e Env
			var err error
			for k, v := range tc.vars {
				if e, err = e.Set(k, v); err != nil {
					t.Fatal(err)
				}
			}
			b, err := e.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != EnvSize {
				t.Fatalf("encoded %d bytes, want %d", len(b), EnvSize)
			}
			got, err := ParseEnv(b)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.vars {
				if got.vars[k] != v {
					t.Errorf("%s = %q, want %q", k, got.vars[k], v)
				}
			}
			if len(got.vars) != len(tc.vars) {
				t.Errorf("got keys %v, want %d keys", got.Keys(), len(tc.vars))
			}
		})
	}
}

func TestEnvEmptyValueIsUnset(t *testing.T) {
	// What GRUB leaves behind after "set next_entry=; save_env next_entry".
	raw := envHeader + "saved_entry=B\nnext_entry=\n"
	raw += strings.Repeat("#", EnvSize-len(raw))
	e, err := ParseEnv([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.Get(KeyNextEntry); ok {
		t.Error("empty next_entry reads as set")
	}
	ent, err := EntriesOf(e)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Entries{Committed: SlotB, CommittedSet: true}); ent != want {
		t.Errorf("entries = %+v, want %+v", ent, want)
	}
}

func TestEnvErrors(t *testing.T) {
	if _, err := ParseEnv([]byte("saved_entry=A\n")); !errors.Is(err, ErrEnvHeader) {
		t.Errorf("no header: err = %v, want ErrEnvHeader", err)
	}
	var e Env
	for _, k := range []string{"", "#x", "a=b", "a\nb", "a\\b"} {
		if _, err := e.Set(k, "v"); !errors.Is(err, ErrEnvKey) {
			t.Errorf("Set(%q): err = %v, want ErrEnvKey", k, err)
		}
	}
	big, _ := e.Set("k", strings.Repeat("v", EnvSize))
	if _, err := big.Encode(); !errors.Is(err, ErrEnvSize) {
		t.Errorf("oversized: err = %v, want ErrEnvSize", err)
	}
	bad, _ := e.Set(KeySavedEntry, "C")
	if _, err := EntriesOf(bad); !errors.Is(err, ErrSlot) {
		t.Errorf("saved_entry=C: err = %v, want ErrSlot", err)
	}
}

func TestSetDoesNotMutate(t *testing.T) {
	a, _ := Env{}.Set("k", "1")
	b, _ := a.Set("k", "2")
	if v, _ := a.Get("k"); v != "1" {
		t.Errorf("Set mutated its receiver: k = %q", v)
	}
	if v, _ := b.Get("k"); v != "2" {
		t.Errorf("k = %q, want 2", v)
	}
}

// TestEnvMatchesGrubEditenv checks the codec against GRUB's own tool, both ways.
func TestEnvMatchesGrubEditenv(t *testing.T) {
	editenv, err := exec.LookPath("grub-editenv")
	if err != nil {
		t.Skip("grub-editenv not installed (make deps installs it)")
	}
	path := filepath.Join(t.TempDir(), "grubenv")
	run := func(args ...string) string {
		out, err := exec.Command(editenv, append([]string{path}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("grub-editenv %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	run("create")
	run("set", "saved_entry=B", "next_entry=A")
	e, err := ReadEnvFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ent, err := EntriesOf(e)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Entries{Committed: SlotB, CommittedSet: true, Next: SlotA, Tries: 1}); ent != want {
		t.Fatalf("entries = %+v, want %+v", ent, want)
	}
	// A trial's tries, as GRUB's save_env leaves them after spending one.
	run("set", "trial_tries=1")
	if e, err = ReadEnvFile(path); err != nil {
		t.Fatal(err)
	}
	if ent, err := EntriesOf(e); err != nil || ent.Tries != 1 || ent.Next != SlotA {
		t.Fatalf("entries = %+v, %v; want A with 1 try", ent, err)
	}
	e, _ = e.Set(KeyNextEntry, "B")
	e, _ = e.Set(KeyTrialTries, "2")
	if err := WriteEnvFile(path, e); err != nil {
		t.Fatal(err)
	}
	if list := run("list"); !strings.Contains(list, "next_entry=B\n") || !strings.Contains(list, "trial_tries=2\n") {
		t.Errorf("grub-editenv list after our arming:\n%s", list)
	}
	e, _ = e.Set(KeyNextEntry, "")
	e, _ = e.Set(KeyTrialTries, "")
	e, _ = e.Set(KeySavedEntry, "A")
	if err := WriteEnvFile(path, e); err != nil {
		t.Fatal(err)
	}
	list := run("list")
	if !strings.Contains(list, "saved_entry=A\n") || !strings.Contains(list, "next_entry=\n") || !strings.Contains(list, "trial_tries=\n") {
		t.Errorf("grub-editenv list after our write:\n%s", list)
	}
	fi, _ := os.Stat(path)
	if fi.Size() != EnvSize {
		t.Errorf("size after write = %d", fi.Size())
	}
}

func TestCmdline(t *testing.T) {
	c := ParseCmdline(`BOOT_IMAGE=/vmlinuz slot=B panic=1 quiet x="a b" slot=A` + "\n")
	if s, err := c.BootedSlot(); err != nil || s != SlotA {
		t.Errorf("BootedSlot = %v, %v; want A (last wins)", s, err)
	}
	if c["x"] != "a b" {
		t.Errorf("x = %q", c["x"])
	}
	if _, ok := c["quiet"]; !ok {
		t.Error("flag quiet missing")
	}
	if _, err := ParseCmdline("quiet").BootedSlot(); !errors.Is(err, ErrSlot) {
		t.Errorf("no slot=: err = %v", err)
	}
}

func TestEntriesTries(t *testing.T) {
	for _, tc := range []struct {
		tries string
		want  int
	}{{"", 1}, {"1", 1}, {"2", 2}, {"3", 3}, {"9", 1}, {"x", 1}} {
		e, _ := Env{}.Set(KeyNextEntry, "B")
		if tc.tries != "" {
			e, _ = e.Set(KeyTrialTries, tc.tries)
		}
		ent, err := EntriesOf(e)
		if err != nil || ent.Next != SlotB || ent.Tries != tc.want {
			t.Errorf("trial_tries %q: %+v %v, want %d tries", tc.tries, ent, err, tc.want)
		}
	}
	// No trial: no tries, whatever trial_tries says.
	e, _ := Env{}.Set(KeyTrialTries, "2")
	if ent, _ := EntriesOf(e); ent.Next != "" || ent.Tries != 0 {
		t.Errorf("no next_entry: %+v", ent)
	}
}

func TestGrubConfig(t *testing.T) {
	cfg, err := GrubConfig{SlotPartitions: map[Slot]int{SlotA: 2, SlotB: 3}, KernelArgs: "console=ttyS0"}.Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"--id A {\n  set root=($bootdisk,gpt2)\n  linux /vmlinuz slot=A panic=1 console=ttyS0",
		"--id B {\n  set root=($bootdisk,gpt3)\n  linux /vmlinuz slot=B panic=1 console=ttyS0",
		`if [ -n "$next_entry" ]; then
  set default="$next_entry"
  if [ "$trial_tries" = "3" ]; then
    set trial_tries=2
    save_env trial_tries
  elif [ "$trial_tries" = "2" ]; then
    set trial_tries=1
    save_env trial_tries
  else
    set next_entry=
    set trial_tries=
    save_env next_entry trial_tries
  fi
fi`,
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("grub.cfg lacks %q:\n%s", want, cfg)
		}
	}
	// The trial's try must be spent (save_env) before any entry boots.
	if strings.Index(cfg, "save_env") > strings.Index(cfg, "menuentry") {
		t.Error("save_env comes after the menu entries")
	}
	if _, err := (GrubConfig{SlotPartitions: map[Slot]int{SlotA: 2}}).Render(); err == nil {
		t.Error("missing slot B partition: no error")
	}
}

func FuzzParseEnv(f *testing.F) {
	e, _ := Env{}.Set(KeySavedEntry, "A")
	seed, _ := e.Encode()
	f.Add(seed)
	f.Add([]byte(envHeader + "a=b\\\nc\nd=\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEnv(b)
		if err != nil {
			return
		}
		enc, err := e.Encode()
		if err != nil {
			return // too large to fit, or a key Set would refuse: fine to reject
		}
		e2, err := ParseEnv(enc)
		if err != nil {
			t.Fatalf("re-parse of our own encoding: %v", err)
		}
		enc2, err := e2.Encode()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("decode→encode→decode disagrees: %v\n%q\n%q", err, enc, enc2)
		}
	})
}
