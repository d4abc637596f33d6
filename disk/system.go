package disk

// SystemImageName is the slot file that holds the node's system image: a squashfs of the
// programs the init supervises but does not link (etcd, containerd, runc, the CNI plugins,
// the kubelet). It is too big to unpack into RAM at every boot, so the init loop-mounts it
// read-only from the booted slot. The slot manifest covers it like the kernel and initramfs,
// so an upgrade writes and verifies it with them.
const SystemImageName = "system.squashfs"

// SystemDir is where the booted slot's system image is mounted on a node; its bin/ holds the
// programs, libexec/cni the CNI plugins.
const SystemDir = "/system"

// SystemBin is the absolute path of a program of the system image.
func SystemBin(name string) string { return SystemDir + "/bin/" + name }
