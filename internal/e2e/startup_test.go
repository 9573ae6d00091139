package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
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
	cmd := exec.Command(bin.aggregator, "-listen", "127.0.0.1:0", "-rounds", "1")
	cmd.Dir = bin.root
	cmd.Env = append(os.Environ(), "GOMAXPROCS=16", "GOGC=100", "GOMEMLIMIT=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	listening := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if listenRE.MatchString(sc.Text()) {
				listening <- true
				return
			}
		}
		listening <- false
	}()
	select {
	case ok := <-listening:
		if !ok {
			_ = cmd.Wait() // its output is all copied once it returns
			t.Fatalf("the aggregator ended without listening; stderr:\n%s", stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the aggregator did not listen within 60 s")
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
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
