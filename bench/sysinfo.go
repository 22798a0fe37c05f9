package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/imgn/imgn/internal/procstat"
)

// FDLimit returns this process's RLIMIT_NOFILE (soft, hard).
func FDLimit() (soft, hard uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0
	}
	return uint64(rl.Cur), uint64(rl.Max)
}

// raiseFDLimit raises the soft RLIMIT_NOFILE to the hard limit and returns
// the new soft limit.
func raiseFDLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return uint64(rl.Cur)
}

// fdReserve is how many descriptors a generator process keeps for itself
// (epoll, pipes, the Go runtime, HTTP to the admin endpoints).
const fdReserve = 64

// MaxConnsPerProc is how many connections one generator process can hold
// under its fd limit.
func MaxConnsPerProc() int {
	soft, _ := FDLimit()
	n := int(soft) - fdReserve
	if n < 1 {
		n = 1
	}
	return n
}

// meminfo returns a /proc/meminfo field in bytes (0 when unknown).
func meminfo(field string) uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, field+":") {
			continue
		}
		fs := strings.Fields(line[len(field)+1:])
		if len(fs) == 0 {
			return 0
		}
		v, _ := strconv.ParseUint(fs[0], 10, 64)
		if len(fs) > 1 && fs[1] == "kB" {
			v *= 1024
		}
		return v
	}
	return 0
}

// MemAvailable is the kernel's estimate of memory available for new work.
func MemAvailable() uint64 { return meminfo("MemAvailable") }

// procRSS and procCPUSeconds read this process's resource use.
var (
	procRSS        = procstat.RSS
	procCPUSeconds = procstat.CPUSeconds
	procCPUWait    = func() float64 { s, _ := procstat.CPUWaitSeconds(); return s }
)

// Machine describes the host a report was measured on.
type Machine struct {
	CPUs       int    `json:"cpus"`
	CPUModel   string `json:"cpu_model,omitempty"`
	MemBytes   uint64 `json:"mem_bytes"`
	Kernel     string `json:"kernel,omitempty"`
	GoVersion  string `json:"go_version"`
	FDLimit    uint64 `json:"fd_limit"`
	PortRange  string `json:"ip_local_port_range,omitempty"`
	SomaxConn  string `json:"somaxconn,omitempty"`
	FileMax    string `json:"file_max,omitempty"`
	SlabBytes  uint64 `json:"slab_bytes,omitempty"`
	MemAvail   uint64 `json:"mem_available_bytes,omitempty"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// LoadAvg is /proc/loadavg when the report was made: other work on
	// the machine competes with the server and the generator.
	LoadAvg string `json:"loadavg,omitempty"`
	// CPUPressure is the first line of /proc/pressure/cpu ("some avg10=..."):
	// the share of time runnable tasks waited for a CPU.
	CPUPressure string `json:"cpu_pressure,omitempty"`
	// CPUIdle is how idle CPUs wait (cpuIdle): on a virtual machine it
	// decides how long a woken thread waits for its vCPU.
	CPUIdle string `json:"cpu_idle,omitempty"`
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

// ThisMachine describes the current host.
func ThisMachine() Machine {
	soft, _ := FDLimit()
	m := Machine{
		CPUs: runtime.NumCPU(), MemBytes: meminfo("MemTotal"), GoVersion: runtime.Version(), FDLimit: soft,
		Kernel: readTrim("/proc/sys/kernel/osrelease"), PortRange: readTrim("/proc/sys/net/ipv4/ip_local_port_range"),
		SomaxConn: readTrim("/proc/sys/net/core/somaxconn"), FileMax: readTrim("/proc/sys/fs/file-max"),
		SlabBytes: meminfo("Slab"), MemAvail: MemAvailable(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		LoadAvg: readTrim("/proc/loadavg"), CPUPressure: cpuPressure(), CPUIdle: cpuIdle("/sys"),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			if k, v, ok := bytes.Cut(line, []byte(":")); ok && string(bytes.TrimSpace(k)) == "model name" {
				m.CPUModel = string(bytes.TrimSpace(v))
				break
			}
		}
	}
	return m
}

// cpuIdle names the cpuidle driver under sysfs root and, for the KVM
// guest's haltpoll driver, how long an idle vCPU polls before it halts
// ("haltpoll, polls 200000 ns before halting"). A guest that halts at once (0 ns) makes
// every wake-up of a thread on an idle vCPU go through the hypervisor,
// which on a shared host can take tens of microseconds to milliseconds.
// "" when sysfs does not say.
func cpuIdle(root string) string {
	driver := readTrim(root + "/devices/system/cpu/cpuidle/current_driver")
	if driver == "" {
		return ""
	}
	if ns := readTrim(root + "/module/haltpoll/parameters/guest_halt_poll_ns"); driver == "haltpoll" && ns != "" {
		return driver + ", polls " + ns + " ns before halting"
	}
	return driver
}

func cpuPressure() string {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}

// hostTicks is the first line of /proc/stat: the time all CPUs spent in
// each state since boot, in clock ticks (user, nice, system, idle, iowait,
// irq, softirq, steal).
type hostTicks [8]uint64

// readHostTicks reads /proc/stat (false where it is missing).
func readHostTicks() (hostTicks, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostTicks{}, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseHostTicks(line)
}

// parseHostTicks parses "cpu  user nice system idle iowait irq softirq
// steal ..."; kernels without the later fields leave them 0.
func parseHostTicks(line string) (hostTicks, bool) {
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return hostTicks{}, false
	}
	var t hostTicks
	for i := range t {
		if i+1 >= len(f) {
			break
		}
		v, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return hostTicks{}, false
		}
		t[i] = v
	}
	return t, true
}

// HostCPU is how the machine's CPUs spent the measured window, in percent
// of all CPU time (from /proc/stat; user includes nice, system includes
// hard interrupts). With the servers' and the generator's CPU wait it
// tells a busy machine (little idle) from one slow to run woken threads
// (much idle, yet long waits: on a VM, the hypervisor waking idle vCPUs).
type HostCPU struct {
	User    float64 `json:"user_pct"`
	System  float64 `json:"system_pct"`
	Softirq float64 `json:"softirq_pct"`
	Idle    float64 `json:"idle_pct"`
	IOWait  float64 `json:"iowait_pct"`
	Steal   float64 `json:"steal_pct"`
}

// hostCPUBetween returns the shares of the time from a to b (nil when no
// time passed or the counters went backwards).
func hostCPUBetween(a, b hostTicks) *HostCPU {
	var d hostTicks
	var total uint64
	for i := range d {
		if b[i] < a[i] {
			return nil
		}
		d[i] = b[i] - a[i]
		total += d[i]
	}
	if total == 0 {
		return nil
	}
	pct := func(v uint64) float64 { return 100 * float64(v) / float64(total) }
	return &HostCPU{User: pct(d[0] + d[1]), System: pct(d[2] + d[5]), Idle: pct(d[3]), IOWait: pct(d[4]),
		Softirq: pct(d[6]), Steal: pct(d[7])}
}
