package host

import (
	"sort"
	"strconv"
	"strings"
)

// ContainerMountRoots are where a Kubernetes node's runtime mounts things that pin EPHEMERAL:
// containers' overlay roots and shm under containerd's state, network namespaces.
var ContainerMountRoots = []string{"/run/containerd", "/run/netns", "/var/run/netns"}

// ReleaseOrder picks, from /proc/self/mountinfo, the mounts to take down before the
// filesystems at roots can be unmounted: every mount strictly below a root or below one of
// ContainerMountRoots, and every overlay (a container's root, whose layers live on
// EPHEMERAL). Deepest first, and of mounts stacked on one point the newest first.
func ReleaseOrder(mountinfo string, roots []string) []string {
	type m struct {
		point string
		seq   int
	}
	var picked []m
	below := func(p string, rs []string) bool {
		for _, r := range rs {
			r = strings.TrimSuffix(r, "/")
			if strings.HasPrefix(p, r+"/") {
				return true
			}
		}
		return false
	}
	inside := func(p string, rs []string) bool {
		for _, r := range rs {
			if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") {
				return true
			}
		}
		return false
	}
	for i, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		sep := -1
		for j, x := range f {
			if x == "-" {
				sep = j
				break
			}
		}
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		point, fstype := unescape(f[4]), f[sep+1]
		if below(point, roots) || inside(point, ContainerMountRoots) || fstype == "overlay" {
			picked = append(picked, m{point, i})
		}
	}
	sort.SliceStable(picked, func(a, b int) bool {
		da, db := strings.Count(picked[a].point, "/"), strings.Count(picked[b].point, "/")
		if da != db {
			return da > db
		}
		return picked[a].seq > picked[b].seq
	})
	out := make([]string, len(picked))
	for i, p := range picked {
		out[i] = p.point
	}
	return out
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
