package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStartupMemoryIsBounded: loading MNIST and encoding 100 clients'
// shards peaks well below what a worker per core made on a many-core
// machine (832 MB with GOMAXPROCS=8, 1.2 GB with 32, before encoding was
// capped at 4 workers and collected more often while loading; about
// 470 MB after). Peak RSS is read from /proc once the aggregator listens.
func TestStartupMemoryIsBounded(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	const limitMB = 600
	a := startEnv(t, "aggregator", bin.aggregator, []string{"GOMAXPROCS=16", "GOGC=100", "GOMEMLIMIT=off"}, "-listen", "127.0.0.1:0", "-rounds", "1")
	a.waitLine(listenRE, 60*time.Second)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(a.cmd.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			t.Logf("peak RSS at start-up with GOMAXPROCS=16: %d MB", kb>>10)
			if kb>>10 > limitMB {
				t.Errorf("peak RSS at start-up %d MB, want under %d MB", kb>>10, limitMB)
			}
			return
		}
	}
	t.Skip("no VmHWM in /proc status")
}
