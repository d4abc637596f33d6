package machine

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Holders lists the processes (other than us) with a file, working directory, root or
// mapping under one of the mount points: what fuser -m would name.
func Holders(mounts ...string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	under := func(p string) bool {
		for _, m := range mounts {
			if p == m || strings.HasPrefix(p, strings.TrimSuffix(m, "/")+"/") {
				return true
			}
		}
		return false
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		hit := false
		for _, l := range []string{"cwd", "root", "exe"} {
			if t, err := os.Readlink(filepath.Join(dir, l)); err == nil && under(t) {
				hit = true
			}
		}
		if !hit {
			fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
			for _, fd := range fds {
				if t, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err == nil && under(t) {
					hit = true
					break
				}
			}
		}
		if !hit {
			if b, err := os.ReadFile(filepath.Join(dir, "maps")); err == nil {
				for _, line := range strings.Split(string(b), "\n") {
					if i := strings.Index(line, "/"); i >= 0 && under(line[i:]) {
						hit = true
						break
					}
				}
			}
		}
		if hit {
			out = append(out, pid)
		}
	}
	return out
}

// KillHolders sends SIGTERM to every holder of the mounts, waits up to grace for them to go,
// then SIGKILLs the rest. It returns how many needed SIGKILL.
func KillHolders(grace time.Duration, reap func() int, mounts ...string) (killed int) {
	pids := Holders(mounts...)
	for _, p := range pids {
		unix.Kill(p, unix.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for len(pids) > 0 && time.Now().Before(deadline) {
		reap()
		time.Sleep(50 * time.Millisecond)
		pids = Holders(mounts...)
	}
	for _, p := range pids {
		unix.Kill(p, unix.SIGKILL)
	}
	for range 40 {
		reap()
		if len(Holders(mounts...)) == 0 {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	return len(pids)
}
