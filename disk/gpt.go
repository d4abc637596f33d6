package disk

import "github.com/diskfs/go-diskfs/partition/gpt"

// GPT is the partition table of the layout, as go-diskfs writes it (the host's image builder
// and install mode both write this one).
func (l Layout) GPT() *gpt.Table {
	t := &gpt.Table{ProtectiveMBR: true, LogicalSectorSize: 512, PhysicalSectorSize: 512}
	for _, p := range l.Parts {
		typ := gpt.LinuxFilesystem
		if p.Kind == KindESP {
			typ = gpt.EFISystemPartition
		}
		t.Partitions = append(t.Partitions, &gpt.Partition{
			Index: p.Number, Start: uint64(p.Start / 512), End: uint64((p.Start+p.Size)/512 - 1),
			Size: uint64(p.Size), Type: typ, Name: p.Name,
		})
	}
	return t
}
