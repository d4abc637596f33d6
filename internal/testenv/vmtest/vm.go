package vmtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"keel/boot"
	"keel/cluster/etcd"
	"keel/config"
	"keel/disk"
	"keel/initramfs/diskimage"
	"keel/internal/testenv"
	"keel/netapi"
	"keel/pki"
	"keel/sequence"
)

// Firmware paths from Debian's ovmf package.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// VM is one QEMU machine with its own disk and firmware variables. It survives reboots and
// restarts; Cleanup kills it.
type VM struct {
	t    testing.TB
	img  *Image
	Dir  string
	Disk string
	vars string
	Port int // host port forwarded to the endpoint
	// Forward maps more host ports (on 127.0.0.1) to guest ports, e.g. an etcd member's.
	Forward map[int]int
	// Memory is the guest's RAM (default 512M; a kubelet and containerd need more).
	Memory string
	// Nice runs QEMU (every vCPU thread) at this nice value: guests that share the host's
	// cores unequally (the fleet test gives its control plane the CPU first).
	Nice int
	// Disk and NIC are the guest's disk controller ("virtio" by default, "nvme", "ahci": q35's
	// own SATA controller) and network card ("virtio" by default, "e1000e"), as on servers.
	DiskBus, NIC string
	// HotplugPort adds an empty PCIe root port "hp0" that QMP device_add can plug a card into.
	HotplugPort bool
	// Direct boots a kernel and initramfs instead of the disk (install mode); NoReboot makes
	// a guest's reboot end QEMU (the test then starts it again, from the disk).
	Direct   *Direct
	NoReboot bool
	// VirtConsole is a file the guest's virtio console (hvc0) writes to: a second console,
	// as a server's screen beside its serial line.
	VirtConsole string
	logPath     string
	logFile     *os.File

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	con     *console
	qmp     *qmp
	starts  int
	clients map[string]*http.Client
}

// New prepares a VM for img without starting it: copies the disk (sparse) and the OVMF
// variables into a fresh directory. Cleanup kills QEMU and, when the test failed, keeps the
// serial log under build/vmtest/logs.
func New(t testing.TB, img *Image) *VM {
	t.Helper()
	dir := t.TempDir()
	vm := &VM{t: t, img: img, Dir: dir, Disk: filepath.Join(dir, "disk.img"), vars: filepath.Join(dir, "vars.fd"),
		logPath: filepath.Join(dir, "serial.log"), clients: map[string]*http.Client{}}
	if out, err := exec.Command("cp", "--sparse=always", img.Disk, vm.Disk).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v: %s", err, out)
	}
	if out, err := exec.Command("cp", OVMFVars, vm.vars).CombinedOutput(); err != nil {
		t.Fatalf("copy OVMF vars: %v: %s", err, out)
	}
	f, err := os.Create(vm.logPath)
	if err != nil {
		t.Fatal(err)
	}
	vm.logFile = f
	t.Cleanup(vm.cleanup)
	return vm
}

func (vm *VM) cleanup() {
	vm.kill()
	vm.logFile.Close()
	if !vm.t.Failed() {
		return
	}
	if dir, err := BuildDir(); err == nil {
		// Several VMs of one test: their t.TempDir()s are 001, 002, ...
		dst := filepath.Join(dir, "logs", safeName(vm.t.Name())+"-"+filepath.Base(vm.Dir)+".log")
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if b, err := os.ReadFile(vm.logPath); err == nil && os.WriteFile(dst, b, 0o644) == nil {
			vm.t.Logf("serial log kept at %s", dst)
		}
	}
}

// Args is the QEMU command line for this VM. KVM=1 in the environment opts into KVM; the
// default is TCG (KVM hangs on the project's machines).
func (vm *VM) Args() []string {
	accel := []string{"-accel", "tcg", "-cpu", "max"} // max: RDRAND, so the guest's CRNG seeds at once
	if os.Getenv("KVM") == "1" {
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	}
	mem := vm.Memory
	if mem == "" {
		mem = "512M"
	}
	bootIndex := "0"
	if vm.Direct != nil {
		bootIndex = "1" // QEMU gives -kernel index 0
	}
	args := append(accel,
		"-machine", "q35", "-m", mem, "-smp", "1",
		"-display", "none", "-no-user-config", "-nodefaults",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file="+vm.vars,
		"-drive", "if=none,id=d0,format=raw,file="+vm.Disk,
		"-device", vm.diskDevice()+",drive=d0,bootindex="+bootIndex,
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:%d", vm.Port, config.DefaultAPIPort)+vm.forwards(),
		"-device", vm.nicDevice()+",netdev=n0",
		"-device", "i6300esb", "-action", "watchdog=reset",
		"-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
		"-qmp", "unix:"+filepath.Join(vm.Dir, "qmp.sock")+",server=on,wait=off",
	)
	if vm.HotplugPort {
		args = append(args, "-device", "pcie-root-port,id=hp0,chassis=1,slot=1")
	}
	if d := vm.Direct; d != nil {
		args = append(args, "-kernel", d.Kernel, "-initrd", d.Initrd, "-append", d.Append)
	}
	if vm.NoReboot {
		args = append(args, "-no-reboot")
	}
	if vm.VirtConsole != "" {
		args = append(args, "-device", "virtio-serial-pci", "-chardev", "file,id=vc0,path="+vm.VirtConsole, "-device", "virtconsole,chardev=vc0")
	}
	return args
}

func (vm *VM) diskDevice() string {
	switch vm.DiskBus {
	case "nvme":
		return "nvme,serial=keel-nvme0"
	case "ahci":
		return "ide-hd,bus=ide.0" // q35's ICH9 AHCI, there with -nodefaults too
	case "", "virtio":
		return "virtio-blk-pci"
	}
	vm.t.Fatalf("vmtest: unknown disk bus %q", vm.DiskBus)
	return ""
}

func (vm *VM) nicDevice() string {
	switch vm.NIC {
	case "e1000e":
		return "e1000e"
	case "", "virtio":
		return "virtio-net-pci"
	}
	vm.t.Fatalf("vmtest: unknown NIC %q", vm.NIC)
	return ""
}

func (vm *VM) forwards() string {
	var hosts []int
	for h := range vm.Forward {
		hosts = append(hosts, h)
	}
	sort.Ints(hosts)
	s := ""
	for _, h := range hosts {
		s += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", h, vm.Forward[h])
	}
	return s
}

// Start powers the VM on. A VM that powered off can be started again on the same disk.
func (vm *VM) Start() {
	vm.t.Helper()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.cmd != nil {
		vm.t.Fatal("vmtest: Start while QEMU is running")
	}
	vm.Port = testenv.FreePort()
	vm.starts++
	fmt.Fprintf(vm.logFile, "==== vmtest: start %d ====\n", vm.starts)
	args := vm.Args()
	vm.t.Logf("qemu (start %d): qemu-system-x86_64 %s", vm.starts, strings.Join(args, " "))
	cmd := exec.Command("qemu-system-x86_64", args...)
	if vm.Nice != 0 {
		cmd = exec.Command("nice", append([]string{"-n", strconv.Itoa(vm.Nice), "qemu-system-x86_64"}, args...)...)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		vm.t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	sock := filepath.Join(vm.Dir, "qmp.sock")
	os.Remove(sock)
	if err := cmd.Start(); err != nil {
		vm.t.Fatalf("start qemu: %v", err)
	}
	vm.cmd = cmd
	vm.con = newConsole(vm.logFile)
	vm.exited = make(chan struct{})
	readDone := make(chan struct{})
	go func() { vm.con.read(out); close(readDone) }()
	go func(cmd *exec.Cmd, exited chan struct{}) {
		<-readDone
		err := cmd.Wait()
		if err != nil && stderr.Len() > 0 {
			fmt.Fprintf(vm.logFile, "==== qemu: %v: %s\n", err, stderr.String())
		}
		close(exited)
	}(cmd, vm.exited)
	q, err := dialQMP(sock, 10*time.Second)
	if err != nil {
		vm.t.Fatalf("vmtest: %v (qemu stderr: %s)", err, stderr.String())
	}
	vm.qmp = q
}

// Expect waits for a console line matching pattern (after the last matched line) and returns
// its submatches.
func (vm *VM) Expect(pattern string, timeout time.Duration) []string {
	vm.t.Helper()
	m, err := vm.con.expect(regexp.MustCompile(pattern), timeout)
	if err != nil {
		vm.t.Fatalf("vmtest: %v", err)
	}
	return m
}

// WaitReady waits for the init's ready line.
func (vm *VM) WaitReady(timeout time.Duration) sequence.Ready {
	vm.t.Helper()
	m := vm.Expect(regexp.QuoteMeta(sequence.ReadyPrefix)+".*", timeout)
	r, err := sequence.ParseReady(m[0])
	if err != nil {
		vm.t.Fatal(err)
	}
	return r
}

// WaitExit waits for QEMU to exit by itself (the guest powered off).
func (vm *VM) WaitExit(timeout time.Duration) {
	vm.t.Helper()
	vm.mu.Lock()
	exited := vm.exited
	vm.mu.Unlock()
	select {
	case <-exited:
	case <-time.After(timeout):
		vm.t.Fatalf("vmtest: QEMU did not exit within %s", timeout)
	}
	vm.mu.Lock()
	vm.cmd = nil
	if vm.qmp != nil {
		vm.qmp.close()
		vm.qmp = nil
	}
	vm.mu.Unlock()
}

// QMP runs a QMP command.
func (vm *VM) QMP(cmd string, args any) json.RawMessage {
	vm.t.Helper()
	vm.mu.Lock()
	q := vm.qmp
	vm.mu.Unlock()
	if q == nil {
		vm.t.Fatalf("vmtest: QMP %s: VM not running", cmd)
	}
	r, err := q.execute(cmd, args)
	if err != nil {
		vm.t.Fatalf("vmtest: %v", err)
	}
	return r
}

// Reset cuts the power and powers on again at once (QMP system_reset): the guest gets no
// chance to sync or unmount.
func (vm *VM) Reset() { vm.t.Helper(); vm.QMP("system_reset", nil) }

// CtrlAltDel presses Ctrl-Alt-Del on the VM's keyboard.
func (vm *VM) CtrlAltDel() {
	vm.t.Helper()
	vm.QMP("send-key", map[string]any{"keys": []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}})
}

// PowerCut kills QEMU outright: the disk keeps exactly what the guest had written.
func (vm *VM) PowerCut() { vm.t.Helper(); vm.kill() }

// CPUTime is the host CPU time (user + system) the running QEMU has used so far: what the
// guest costs the machine, whatever it runs (TCG emulates every guest instruction on host
// threads).
func (vm *VM) CPUTime() time.Duration {
	vm.t.Helper()
	vm.mu.Lock()
	cmd := vm.cmd
	vm.mu.Unlock()
	if cmd == nil {
		vm.t.Fatal("vmtest: CPUTime of a VM that is not running")
	}
	// nice (see Nice) execs QEMU: the PID is QEMU's either way.
	d, err := testenv.CPUTime(cmd.Process.Pid)
	if err != nil {
		vm.t.Fatalf("vmtest: %v", err)
	}
	return d
}

func (vm *VM) kill() {
	vm.mu.Lock()
	cmd, exited := vm.cmd, vm.exited
	vm.cmd = nil
	if vm.qmp != nil {
		vm.qmp.close()
		vm.qmp = nil
	}
	vm.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// EtcdTLS is a client configuration for the VM's etcd member (and its cluster): the image's
// etcd CA and its etcd admin certificate, as an operator's etcdctl would use them.
func (vm *VM) EtcdTLS() *tls.Config {
	p := func(n string) string { return filepath.Join(vm.img.PKIDir, n) }
	t, err := etcd.ClientTLS(p(pki.EtcdCA), p(pki.EtcdAdmin), p(pki.EtcdAdminKey))
	if err != nil {
		vm.t.Fatal(err)
	}
	return t
}

// client returns an HTTPS client presenting the certificate of role ("" for none).
func (vm *VM) client(role string) *http.Client {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if c, ok := vm.clients[role]; ok {
		return c
	}
	ca, err := os.ReadFile(filepath.Join(vm.img.PKIDir, "ca.crt"))
	if err != nil {
		vm.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	if role != "" {
		cert, err := tls.LoadX509KeyPair(filepath.Join(vm.img.PKIDir, role+".crt"), filepath.Join(vm.img.PKIDir, role+".key"))
		if err != nil {
			vm.t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}, Timeout: 30 * time.Second}
	vm.clients[role] = c
	return c
}

// StreamClient is a client for role without an overall timeout, for follow streams.
func (vm *VM) StreamClient(role string) *http.Client {
	c := *vm.client(role)
	c.Timeout = 0
	return &c
}

// PKIDir holds the endpoint's CA and the role certificates (admin.crt, admin.key, ...).
func (vm *VM) PKIDir() string { return vm.img.PKIDir }

// URL is the endpoint URL of path through hostfwd.
func (vm *VM) URL(path string) string {
	return "https://127.0.0.1:" + strconv.Itoa(vm.Port) + path
}

// Call sends a request as role ("admin", "operator", "reader", or "" for no certificate)
// and returns the status code and body. A transport error (such as a refused handshake) is
// returned, not fatal.
func (vm *VM) Call(role, method, path string, body any) (int, []byte, error) {
	var raw []byte
	if body != nil {
		raw, _ = json.Marshal(body)
	}
	return vm.CallRaw(role, method, path, raw)
}

// CallRaw is Call with the request body as bytes (nil for none).
func (vm *VM) CallRaw(role, method, path string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, vm.URL(path), rd)
	if err != nil {
		return 0, nil, err
	}
	resp, err := vm.client(role).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Status reads /v1/status as admin.
func (vm *VM) Status() netapi.Status {
	vm.t.Helper()
	code, b, err := vm.Call("admin", "GET", "/v1/status", nil)
	if err != nil || code != http.StatusOK {
		vm.t.Fatalf("vmtest: GET /v1/status: %d %v: %s", code, err, b)
	}
	var st netapi.Status
	if err := json.Unmarshal(b, &st); err != nil {
		vm.t.Fatalf("vmtest: status JSON: %v: %s", err, b)
	}
	return st
}

// Grubenv reads the VM's grubenv from its disk. The VM must be off.
func (vm *VM) Grubenv() boot.Env {
	vm.t.Helper()
	vm.mustBeOff("read grubenv")
	b, err := diskimage.ReadFATFile(vm.Disk, 1, "/grub/grubenv")
	if err != nil {
		vm.t.Fatal(err)
	}
	e, err := boot.ParseEnv(b)
	if err != nil {
		vm.t.Fatal(err)
	}
	return e
}

// SetGrubenv sets key=value in the VM's grubenv in place. The VM must be off.
func (vm *VM) SetGrubenv(key, value string) {
	vm.t.Helper()
	e, err := vm.Grubenv().Set(key, value)
	if err != nil {
		vm.t.Fatal(err)
	}
	b, err := e.Encode()
	if err != nil {
		vm.t.Fatal(err)
	}
	if err := diskimage.OverwriteFATFile(vm.Disk, 1, "/grub/grubenv", b); err != nil {
		vm.t.Fatal(err)
	}
}

// ReadPartition returns n bytes from the start of the named partition of the VM's disk.
// The VM must be off.
func (vm *VM) ReadPartition(name string, n int64) []byte {
	vm.t.Helper()
	vm.mustBeOff("read partition")
	l, err := disk.Plan(1024*disk.MiB, disk.DefaultSpecs)
	if err != nil {
		vm.t.Fatal(err)
	}
	p, ok := l.Find(name)
	if !ok {
		vm.t.Fatalf("no partition %s", name)
	}
	f, err := os.Open(vm.Disk)
	if err != nil {
		vm.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, min(n, p.Size))
	if _, err := f.ReadAt(b, p.Start); err != nil {
		vm.t.Fatal(err)
	}
	return b
}

// WritePartition writes b at the start of the named partition. The VM must be off.
func (vm *VM) WritePartition(name string, b []byte) {
	vm.t.Helper()
	vm.mustBeOff("write partition")
	l, _ := disk.Plan(1024*disk.MiB, disk.DefaultSpecs)
	p, _ := l.Find(name)
	f, err := os.OpenFile(vm.Disk, os.O_WRONLY, 0)
	if err != nil {
		vm.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, p.Start); err != nil {
		vm.t.Fatal(err)
	}
}

func (vm *VM) mustBeOff(what string) {
	vm.mu.Lock()
	running := vm.cmd != nil
	vm.mu.Unlock()
	if running {
		vm.t.Fatalf("vmtest: %s: the VM is running (its page cache could overwrite the change)", what)
	}
}

// Console returns everything the serial console printed since the last Start.
func (vm *VM) Console() string { return vm.con.all() }
