package data

import (
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// memoryLimits returns what bounds this process's memory on Linux: the
// machine's RAM, the RLIMIT_AS and RLIMIT_DATA soft limits, and the memory
// limit of its cgroup (v2, or v1). Unknown or unlimited ones are left out.
func memoryLimits() []int64 {
	var out []int64
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		out = append(out, int64(si.Totalram)*int64(si.Unit))
	}
	for _, res := range []int{syscall.RLIMIT_AS, syscall.RLIMIT_DATA} {
		var rl syscall.Rlimit
		if syscall.Getrlimit(res, &rl) == nil && rl.Cur < math.MaxInt64 {
			out = append(out, int64(rl.Cur))
		}
	}
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			out = append(out, n) // "max" (v2) does not parse: no limit
		}
	}
	return out
}
