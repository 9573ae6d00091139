package data

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// memoryLimits returns what bounds this process's memory on Linux: the
// machine's RAM; the RLIMIT_AS and RLIMIT_DATA soft limits, less the
// address space and data already in use; and the memory limits of its
// cgroup and the cgroup's ancestors (v2, or v1). Unknown or unlimited ones
// are left out.
func memoryLimits() []int64 {
	var out []int64
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		out = append(out, int64(si.Totalram)*int64(si.Unit))
	}
	used := procStatus("VmSize:", "VmData:")
	for i, res := range []int{syscall.RLIMIT_AS, syscall.RLIMIT_DATA} {
		var rl syscall.Rlimit
		if syscall.Getrlimit(res, &rl) == nil && rl.Cur < math.MaxInt64 {
			out = append(out, max(int64(rl.Cur)-used[i], 1))
		}
	}
	return append(out, cgroupLimits()...)
}

// procStatus returns the sizes in bytes of the given fields of
// /proc/self/status (0 for one not found).
func procStatus(fields ...string) []int64 {
	out := make([]int64, len(fields))
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text()) // "VmSize:", "123456", "kB"
		for i, name := range fields {
			if len(f) == 3 && f[0] == name && f[2] == "kB" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					out[i] = kb << 10
				}
			}
		}
	}
	return out
}

// cgroupLimits returns the memory limits set on this process's cgroup and
// its ancestors, as /proc/self/cgroup names them: memory.max under cgroup
// v2, memory.limit_in_bytes under the v1 memory controller. A cgroup not
// visible here (another cgroup namespace) is skipped.
func cgroupLimits() []int64 {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	var out []int64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3) // "ID:controllers:path"
		if len(parts) != 3 {
			continue
		}
		var dir, file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir, file = "/sys/fs/cgroup", "memory.max"
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			dir, file = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
		default:
			continue
		}
		for p := path.Clean("/" + parts[2]); ; p = path.Dir(p) {
			b, err := os.ReadFile(filepath.Join(dir, p, file))
			if err == nil {
				// "max" (v2) does not parse: no limit.
				if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
					out = append(out, n)
				}
			}
			if p == "/" {
				break
			}
		}
	}
	return out
}
