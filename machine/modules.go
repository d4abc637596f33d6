package machine

// BaseModules are what every keel node loads whatever its hardware, in load order: the file
// systems and block features its boot mounts. Some are easy to miss: vfat mounts fail with
// EINVAL without nls_cp437 and nls_ascii; ext4 needs crc32c_generic loaded explicitly (a
// softdep modules.dep omits). loop and squashfs mount the slot's system image. The machine's
// devices get their drivers by modalias (Coldplug).
var BaseModules = []string{
	"crc32c_generic", "ext4",
	"nls_cp437", "nls_ascii", "vfat",
	"efivarfs", "loop", "squashfs",
}

// HardwareModules are the drivers an initramfs carries for Coldplug to choose from: QEMU's
// virtio devices and watchdog, and the storage and network controllers of common servers
// (NVMe, AHCI SATA, SAS HBAs and RAID, Intel and Broadcom NICs), with USB host controllers
// for a USB stick. Drivers whose devices need firmware from Debian's non-free packages (tg3
// for some chips, bnx2) are carried, but not that firmware yet.
var HardwareModules = []string{
	"virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_console", "i6300esb",
	"nvme", "ahci", "sd_mod", "mpt3sas", "megaraid_sas",
	"e1000e", "igb", "ixgbe", "i40e", "tg3", "bnxt_en",
	"xhci_pci", "usb_storage",
}

// Driver is a module Coldplug loaded for a device, or failed to load (Error).
type Driver struct {
	Module   string `json:"module"`
	Device   string `json:"device"`   // the sysfs path of the first device that needed it
	Modalias string `json:"modalias"` // that device's modalias
	Error    string `json:"error,omitempty"`
}
