package e2e

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var scale = flag.Bool("scale", false, "run the long scale tests (also FEDGATHER_SCALE=1)")

// TestThousandSimulatedTrainers connects 1,000 simulated trainers
// (bench/simtrainer: real websocket connections speaking the real protocol,
// answering each task at once) to the real aggregator, with every trainer
// sending an update in every round, and checks that every round completes
// with all its updates and that the aggregator logs no warning or error.
// It is long, so it runs only with -scale or FEDGATHER_SCALE=1:
//
//	go test ./internal/e2e -run ThousandSimulated -scale -v
func TestThousandSimulatedTrainers(t *testing.T) {
	if !*scale && os.Getenv("FEDGATHER_SCALE") != "1" {
		t.Skip("long: run with -scale or FEDGATHER_SCALE=1")
	}
	const trainers, rounds = 1000, 3
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// Each process raises its own soft limit to the hard one (Go does so
	// at start-up); the hard limit must leave room for 1,000 connections.
	if lim.Max < trainers+200 {
		t.Skipf("open-file hard limit %d is below %d", lim.Max, trainers+200)
	}
	sim := filepath.Join(t.TempDir(), "simtrainer")
	build := exec.Command("go", "build", "-o", sim, "./bench/simtrainer")
	build.Dir = bin.root
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build simtrainer: %v\n%s", err, b)
	}

	a, addr := aggregator(t, "-clients", "1000", "-fraction", "1", "-rounds", "3", "-min-trainers", "1000")
	s := start(t, "simtrainer", sim, "-aggregator", addr, "-n", "1000")
	a.waitLine(doneRE, 10*time.Minute)
	if code := a.wait(time.Minute); code != 0 {
		t.Fatalf("aggregator exit code %d", code)
	}
	for _, r := range rounds2(t, a.Lines(), rounds) {
		if r.updates != trainers {
			t.Errorf("round %d folded %d updates, want %d", r.round, r.updates, trainers)
		}
	}
	var bad []string
	for _, l := range strings.Split(a.Stderr(), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			bad = append(bad, l)
		}
	}
	if len(bad) > 0 {
		t.Errorf("aggregator logged %d warnings or errors; first: %s", len(bad), tail(bad[0], 500))
	}
	if code := s.wait(time.Minute); code != 0 {
		t.Errorf("simtrainer exit code %d; stderr: %s", code, tail(s.Stderr(), 2000))
	}
	var st struct {
		Connected   int `json:"connected"`
		Failures    int `json:"failures"`
		ErrorFrames int `json:"error_frames"`
		Tasks       int `json:"tasks"`
	}
	lines := s.Lines()
	if len(lines) == 0 || json.Unmarshal([]byte(lines[len(lines)-1]), &st) != nil {
		t.Fatalf("simtrainer printed no summary: %q", lines)
	}
	if st.Connected != trainers || st.Failures != 0 || st.ErrorFrames != 0 || st.Tasks < rounds*trainers {
		t.Errorf("simtrainer: %s; want %d connected, at least %d tasks, no failures or error frames", lines[len(lines)-1], trainers, rounds*trainers)
	}
	t.Logf("aggregator: %v", counters(t, a.Lines()))
	t.Logf("simtrainer: %s", lines[len(lines)-1])
}
