package host

import (
	"slices"
	"testing"
)

func TestReleaseOrder(t *testing.T) {
	mi := `22 1 0:20 / /proc rw - proc proc rw
25 1 0:22 / /run rw - tmpfs tmpfs rw
30 1 254:6 / /var rw,nosuid,nodev - ext4 /dev/vda6 rw
31 1 254:5 / /state rw - ext4 /dev/vda5 rw
40 25 0:50 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw,lowerdir=/var/lib/containerd/x
41 30 0:51 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~projected/kube-api-access rw - tmpfs tmpfs rw
42 25 0:52 / /run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm rw - tmpfs shm rw
43 25 0:4 net:[4026532] /run/netns/cni-1 rw - nsfs nsfs rw
44 30 0:53 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~projected/kube-api-access rw - tmpfs tmpfs rw
45 1 0:54 / /mnt/with\040space rw - overlay overlay rw
46 1 0:55 / /variable rw - tmpfs tmpfs rw
`
	got := ReleaseOrder(mi, []string{"/var", "/state"})
	want := []string{
		"/var/lib/kubelet/pods/p1/volumes/kubernetes.io~projected/kube-api-access", // 44, stacked on 41: newest first
		"/var/lib/kubelet/pods/p1/volumes/kubernetes.io~projected/kube-api-access",
		"/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm",
		"/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs",
		"/run/netns/cni-1",
		"/mnt/with space",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ReleaseOrder:\n got %q\nwant %q", got, want)
	}
	if got := ReleaseOrder("garbage\n\n1 2 3", []string{"/var"}); len(got) != 0 {
		t.Errorf("garbage: %q", got)
	}
}
