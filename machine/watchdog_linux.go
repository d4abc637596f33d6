package machine

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Watchdog is an armed hardware watchdog (/dev/watchdog). While armed, a goroutine pings it;
// if the init hangs (or Hang is called) the machine resets after the timeout.
type Watchdog struct {
	f    *os.File
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// ArmWatchdog opens the watchdog device and sets its timeout. Opening it starts it.
func ArmWatchdog(dev string, timeout time.Duration) (*Watchdog, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("watchdog %s: %w", dev, err)
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.WDIOC_SETTIMEOUT, int(timeout.Seconds())); err != nil {
		f.Write([]byte("V")) // magic close: do not leave it running with a timeout we did not choose
		f.Close()
		return nil, fmt.Errorf("watchdog %s: set timeout %s: %w", dev, timeout, err)
	}
	w := &Watchdog{f: f, stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(max(timeout/4, time.Second))
		defer t.Stop()
		for {
			if _, err := f.Write([]byte{0}); err != nil {
				return
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w, nil
}

// Hang stops pinging without disarming: the watchdog will reset the machine.
func (w *Watchdog) Hang() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}

// Disarm stops the watchdog with the magic close ('V'), so that closing it does not reset.
func (w *Watchdog) Disarm() error {
	w.Hang()
	if _, err := w.f.Write([]byte("V")); err != nil {
		w.f.Close()
		return fmt.Errorf("watchdog: magic close: %w", err)
	}
	return w.f.Close()
}
