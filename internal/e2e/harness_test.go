// Package e2e tests the aggregator and trainer binaries as a user runs
// them: real processes talking over real loopback websockets.
package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var bin struct {
	aggregator, trainer, root string
}

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return 0, fmt.Errorf("go env GOMOD: %w", err)
	}
	bin.root = filepath.Dir(strings.TrimSpace(string(out)))
	dir, err := os.MkdirTemp("", "fedgather-e2e-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "./cmd/aggregator", "./cmd/trainer")
	build.Dir = bin.root
	if b, err := build.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("build binaries: %v\n%s", err, b)
	}
	bin.aggregator = filepath.Join(dir, "aggregator")
	bin.trainer = filepath.Join(dir, "trainer")
	return m.Run(), nil
}

// proc is a running binary whose stdout lines are collected.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	stderr bytes.Buffer
	newLn  chan struct{}
	exited chan struct{}
	err    error
}

func start(t *testing.T, name, path string, args ...string) *proc {
	t.Helper()
	return startEnv(t, name, path, nil, args...)
}

// startEnv is start with env added to the process's environment, after
// GOMAXPROCS=1, which it may therefore override.
func startEnv(t *testing.T, name, path string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, newLn: make(chan struct{}, 1), exited: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Dir = bin.root
	p.cmd.Env = append(append(os.Environ(), "GOMAXPROCS=1"), env...)
	p.cmd.Stderr = &syncWriter{mu: &p.mu, w: &p.stderr}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.newLn <- struct{}{}:
			default:
			}
		}
		_, _ = io.Copy(io.Discard, out)
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		<-p.exited
		if t.Failed() {
			t.Logf("%s stdout:\n%s\n%s stderr (last 3000 bytes):\n%s", name, strings.Join(p.Lines(), "\n"), name, tail(p.Stderr(), 3000))
		}
	})
	return p
}

type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

func (p *proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

func (p *proc) kill(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// waitLine waits for a stdout line matching re and returns its submatches.
func (p *proc) waitLine(re *regexp.Regexp, timeout time.Duration) []string {
	p.t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		lines := p.Lines()
		for ; seen < len(lines); seen++ {
			if m := re.FindStringSubmatch(lines[seen]); m != nil {
				return m
			}
		}
		select {
		case <-p.newLn:
		case <-p.exited:
			if len(p.Lines()) == seen {
				p.t.Fatalf("%s exited (%v) without printing a line matching %q", p.name, p.err, re)
			}
		case <-deadline:
			p.t.Fatalf("%s printed no line matching %q within %v", p.name, re, timeout)
		}
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.t.Fatalf("%s still running after %v", p.name, timeout)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("%s: %v", p.name, p.err)
	return -1
}

var listenRE = regexp.MustCompile(`^listening on (\S+) `)

// aggregator starts the aggregator on a free loopback port with args and
// returns it with its address.
func aggregator(t *testing.T, args ...string) (*proc, string) {
	t.Helper()
	args = append([]string{"-listen", "127.0.0.1:0"}, args...)
	a := start(t, "aggregator", bin.aggregator, args...)
	m := a.waitLine(listenRE, 60*time.Second)
	return a, m[1]
}

func trainer(t *testing.T, addr, name string, args ...string) *proc {
	t.Helper()
	args = append([]string{"-aggregator", addr, "-name", name, "-max-backoff", "1s"}, args...)
	return start(t, name, bin.trainer, args...)
}

// roundLine is one parsed per-round line.
type roundLine struct {
	round, updates                          int
	acc, secs                               float64
	tasks                                   map[string]int
	requeued, reissued, duplicates, dropped int
}

var roundRE = regexp.MustCompile(`^round (\d+)/\d+ acc=([0-9.]+) .* secs=([0-9.]+) updates=(\d+) tasks=(\S+)(.*) speed=\S+ eta=`)

func parseRound(line string) (roundLine, bool) {
	m := roundRE.FindStringSubmatch(line)
	if m == nil {
		return roundLine{}, false
	}
	r := roundLine{tasks: map[string]int{}}
	r.round, _ = strconv.Atoi(m[1])
	r.acc, _ = strconv.ParseFloat(m[2], 64)
	r.secs, _ = strconv.ParseFloat(m[3], 64)
	r.updates, _ = strconv.Atoi(m[4])
	if m[5] != "-" {
		for _, kv := range strings.Split(m[5], ",") {
			i := strings.LastIndexByte(kv, ':')
			n, _ := strconv.Atoi(kv[i+1:])
			r.tasks[kv[:i]] = n
		}
	}
	for _, f := range strings.Fields(m[6]) {
		k, v, _ := strings.Cut(f, "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "requeued":
			r.requeued = n
		case "reissued":
			r.reissued = n
		case "duplicates":
			r.duplicates = n
		case "dropped":
			r.dropped = n
		}
	}
	return r, true
}

func rounds(lines []string) []roundLine {
	var rs []roundLine
	for _, l := range lines {
		if r, ok := parseRound(l); ok {
			rs = append(rs, r)
		}
	}
	return rs
}

// tasksPerRound is what every round completes by default: m = 10 training
// tasks (K=100, C=0.1) and 10 evaluation tasks (-eval-shards 10) of the
// version it produced. (Those run in the next round's gather, the last
// round's in a gather of their own, so a job of R rounds completes
// R·tasksPerRound tasks and the line of every round after the first
// credits 20.)
const tasksPerRound = 10 + 10

var doneRE = regexp.MustCompile(`^done rounds=(\d+) accuracy=([0-9.]+) loss=([0-9.]+) seconds=([0-9.]+)$`)

// counters parses the "tasks ..." accounting line.
func counters(t *testing.T, lines []string) map[string]int64 {
	t.Helper()
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "tasks "); ok {
			c := map[string]int64{}
			for _, f := range strings.Fields(rest) {
				k, v, _ := strings.Cut(f, "=")
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatalf("counter %q in %q", f, l)
				}
				c[k] = n
			}
			return c
		}
	}
	t.Fatalf("no task accounting line in the aggregator's output")
	return nil
}
