package machine

// DefaultModules are what a keel node loads on a QEMU/virtio machine with Debian's kernel,
// in load order. Some are easy to miss: vfat mounts fail with EINVAL without nls_cp437 and
// nls_ascii; ext4 needs crc32c_generic loaded explicitly (a softdep modules.dep omits). loop
// and squashfs mount the slot's system image.
var DefaultModules = []string{
	"virtio_pci", "virtio_blk", "virtio_net",
	"crc32c_generic", "ext4",
	"nls_cp437", "nls_ascii", "vfat",
	"efivarfs", "i6300esb", "loop", "squashfs",
}
