package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"keel/machine/modalias"
)

// LoadModules loads each module and its dependencies from /lib/modules/$(uname -r), using
// the modules.dep the initramfs carries. It loads all it can and returns every failure, so
// one missing driver does not hide the others.
func LoadModules(names []string) (loaded int, errs []error) {
	p, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		return 0, []error{fmt.Errorf("load modules: %w", err)}
	}
	for _, n := range names {
		if err := p.Probe(n, ""); err != nil {
			errs = append(errs, fmt.Errorf("load module %s: %w", n, err))
			continue
		}
		loaded++
	}
	return loaded, errs
}

// coldplugRounds bounds the walks: a bus driver makes its children appear (virtio_pci →
// the virtio disk and NIC, ahci → the SATA disk that sd_mod drives), so each round that
// loaded something walks again; three levels are the deepest seen.
const coldplugRounds = 5

// Drivers loads the drivers the machine's devices ask for, by modalias against the
// modules.alias the initramfs carries: those present at boot (Coldplug), then each device
// that appears later (Hotplug, from the kernel's uevents). Each module is tried once.
type Drivers struct {
	table  *modalias.Table
	prober *kmodule.Prober
	sock   int // the uevent socket, opened before the first walk: no device falls between
	// Loaded is called after each hot-plugged driver (nil: nothing).
	Loaded func(Driver)

	mu    sync.Mutex
	tried map[string]bool
	list  []Driver
}

// OpenDrivers reads modules.alias and modules.dep of the running kernel and opens the
// uevent socket.
func OpenDrivers() (*Drivers, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, fmt.Errorf("drivers: uname: %w", err)
	}
	file := path.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]), "modules.alias")
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("drivers: %w (an initramfs built before drivers were found by modalias)", err)
	}
	t, err := modalias.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("drivers: %s: %w", file, err)
	}
	p, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		return nil, fmt.Errorf("drivers: %w", err)
	}
	sock, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("drivers: uevent socket: %w", err)
	}
	// Group 1 is the kernel's own messages (udev re-broadcasts on 2).
	if err := unix.Bind(sock, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(sock)
		return nil, fmt.Errorf("drivers: bind the uevent socket: %w", err)
	}
	// A burst of devices (a disk shelf) must not overflow the default buffer.
	_ = unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	return &Drivers{table: t, prober: p, sock: sock, tried: map[string]bool{}}, nil
}

// List is every driver tried, in load order.
func (d *Drivers) List() []Driver {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Driver(nil), d.list...)
}

// load tries each module not tried before; it returns the drivers it tried.
func (d *Drivers) load(needs []modalias.Need) ([]Driver, error) {
	var out []Driver
	var errs []error
	for _, n := range needs {
		d.mu.Lock()
		seen := d.tried[n.Module]
		d.tried[n.Module] = true
		d.mu.Unlock()
		if seen {
			continue
		}
		dr := Driver{Module: n.Module, Device: "/sys/" + n.Device, Modalias: n.Modalias}
		if err := d.prober.Probe(n.Module, ""); err != nil {
			dr.Error = err.Error()
			errs = append(errs, fmt.Errorf("load module %s (for %s): %w", n.Module, dr.Device, err))
		}
		d.mu.Lock()
		d.list = append(d.list, dr)
		d.mu.Unlock()
		out = append(out, dr)
	}
	return out, errors.Join(errs...)
}

// Coldplug loads the drivers of the devices in /sys/devices, walking again after each round
// that loaded one until nothing new is needed; it returns the failures.
func (d *Drivers) Coldplug() error {
	sys := os.DirFS("/sys")
	var errs []error
	for range coldplugRounds {
		needs, err := d.table.Coldplug(sys)
		if err != nil {
			return fmt.Errorf("coldplug: walk /sys: %w", err)
		}
		fresh, err := d.load(needs)
		errs = append(errs, err)
		if len(fresh) == 0 {
			break
		}
		// Most drivers probe their devices before init_module returns; a few defer it.
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// Hotplug loads the drivers of devices that appear from now on, until ctx ends; a failure is
// in List and passed to Loaded like a success.
func (d *Drivers) Hotplug(ctx context.Context) {
	defer unix.Close(d.sock)
	// Wake once a second to notice the end of ctx.
	_ = unix.SetsockoptTimeval(d.sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		n, from, err := unix.Recvfrom(d.sock, buf, 0)
		switch {
		case errors.Is(err, unix.ENOBUFS):
			// The socket overflowed and dropped messages: walk /sys for what they said.
			_ = d.Coldplug()
			continue
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			continue // the timeout
		case err != nil:
			d.mu.Lock()
			d.list = append(d.list, Driver{Error: "hotplug stopped: " + err.Error()})
			d.mu.Unlock()
			return
		}
		// Only the kernel's: another process with CAP_NET_ADMIN could send made-up devices.
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 || n <= 0 {
			continue
		}
		u, err := modalias.ParseUevent(buf[:n])
		if err != nil {
			continue
		}
		loaded, _ := d.load(d.table.Needs(u))
		for _, dr := range loaded {
			if d.Loaded != nil {
				d.Loaded(dr)
			}
		}
	}
}
