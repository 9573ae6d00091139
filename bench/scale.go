package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// scaleRow is one line of "bench scale": the real aggregator binary with
// N simulated trainers (bench/simtrainer, N websocket connections) and m
// updates per round (-clients 1000 -fraction m/1000). The first ⌈N/m⌉+1
// rounds are a warm-up: they carry the connections and the first shard
// transfers, and give every trainer at least one task (tasks go to the
// longest-idle trainer), so that every connection has carried frames before
// memory is measured, whatever m. The figures are over the measured rounds
// after the warm-up. One more round follows them, so that the aggregator's
// /metrics can be read (for the Go heap in use) while it is still running,
// outside the measured rounds.
type scaleRow struct {
	Row         string          `json:"row"` // "scale"
	Trainers    int             `json:"trainers"`
	Run         int             `json:"run"` // 1-based repeat of this configuration
	Fraction    float64         `json:"fraction"`
	PerRound    int             `json:"updates_per_round"`
	Rounds      int             `json:"rounds"` // measured rounds (after the warm-up)
	Warmup      int             `json:"warmup_rounds"`
	RoundSecs   spread          `json:"round_seconds"`    // wall time per round
	CPUPerRound spread          `json:"cpu_per_round_s"`  // aggregator user+system CPU seconds per round
	BaseRSS     int64           `json:"base_rss_bytes"`   // VmRSS once listening, before any trainer
	RSS         int64           `json:"rss_bytes"`        // VmRSS after the last round
	HWM         int64           `json:"hwm_bytes"`        // VmHWM (peak RSS) after the last round
	HeapInuse   int64           `json:"heap_inuse_bytes"` // go_memstats_heap_inuse_bytes after the last round (0: not read)
	HeapKept    int64           `json:"heap_kept_bytes"`  // heap_idle − heap_released: free heap not yet returned to the system
	Stacks      int64           `json:"stack_bytes"`      // go_memstats_stack_inuse_bytes
	Allocated   int64           `json:"alloc_bytes"`      // go_memstats_alloc_bytes_total over the measured rounds (0: not read)
	LiveHeap    int64           `json:"live_heap_bytes"`  // largest live heap after a collection during the measured rounds, else the latest (GODEBUG=gctrace=1, GOGC=25)
	ModelBytes  int64           `json:"model_bytes"`
	Warnings    int             `json:"log_warnings"` // aggregator log lines at level WARN or ERROR
	Samples     []string        `json:"log_samples,omitempty"`
	Completed   int             `json:"rounds_completed"`
	Total       int             `json:"rounds_total"` // rounds the aggregator was asked for
	Accounting  string          `json:"accounting"`   // the aggregator's "tasks assigned=..." line
	ExitCode    int             `json:"exit_code"`
	Sim         json.RawMessage `json:"simtrainer"`
	Seconds     float64         `json:"seconds"`
}

var (
	roundLineRE = regexp.MustCompile(`^round (\d+)/(\d+) `)
	listenRE    = regexp.MustCompile(`^listening on (\S+) `)
	doneLineRE  = regexp.MustCompile(`^done rounds=(\d+) `)
	// gctraceRE finds the live heap (the third figure) in a gctrace line:
	// "gc 7 @1.2s 3%: ... 410->415->380 MB, 820 MB goal, ...".
	gctraceRE = regexp.MustCompile(`^gc \d+ @.* \d+->\d+->(\d+) MB`)
)

func runScale(args []string) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	agg := fs.String("aggregator", "", "aggregator binary (go build ./cmd/aggregator)")
	sim := fs.String("simtrainer", "", "simtrainer binary (go build ./bench/simtrainer)")
	trainers := fs.String("trainers", "10,100,1000", "connected trainers, comma-separated")
	updates := fs.String("updates", "10,100,1000", "updates per round, comma-separated (of 1,000 clients)")
	rounds := fs.Int("rounds", 3, "measured rounds per configuration, between the warm-up rounds and one for reading /metrics")
	repeats := fs.Int("repeats", 3, "runs of each configuration, all configurations once before any twice")
	timeout := fs.Duration("timeout", 10*time.Minute, "limit per configuration")
	logs := fs.String("logs", "", "directory to keep each run's aggregator log in")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *agg == "" || *sim == "" {
		return errors.New("-aggregator and -simtrainer are required")
	}
	ns, err := ints(*trainers)
	if err != nil {
		return err
	}
	ms, err := ints(*updates)
	if err != nil {
		return err
	}
	for run := 1; run <= *repeats; run++ {
		for _, n := range ns {
			for _, m := range ms {
				row, err := scaleRun(*agg, *sim, n, m, run, *rounds, *timeout, *logs)
				if err != nil {
					return fmt.Errorf("%d trainers, %d updates per round, run %d: %w", n, m, run, err)
				}
				if err := emit(row); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// sample is the aggregator's state when it printed a round line.
type sample struct {
	at  time.Time
	cpu float64
	rss int64
	hwm int64
}

func scaleRun(aggBin, simBin string, n, m, run, rounds int, timeout time.Duration, logDir string) (*scaleRow, error) {
	const clients = 1000
	frac := float64(m) / clients
	warm := (n+m-1)/m + 1
	progress("scale: %d trainers, %d updates per round, %d warm-up + %d measured rounds", n, m, warm, rounds)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	agg := exec.CommandContext(ctx, aggBin, "-listen", "127.0.0.1:0", "-clients", strconv.Itoa(clients),
		"-fraction", strconv.FormatFloat(frac, 'g', -1, 64), "-rounds", strconv.Itoa(warm+rounds+1),
		"-min-trainers", strconv.Itoa(n), "-log-level", "info")
	agg.Cancel = func() error { return agg.Process.Signal(syscall.SIGKILL) }
	// gctrace prints the live heap after every collection on stderr, and
	// GOGC=25 makes collections frequent enough that it tracks the heap
	// the measured rounds need (freed memory otherwise hides growth: after
	// loading MNIST the process holds hundreds of MB it no longer uses).
	agg.Env = append(os.Environ(), "GODEBUG=gctrace=1", "GOGC=25")
	stdout, err := agg.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := agg.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := agg.Start(); err != nil {
		return nil, err
	}
	pid := agg.Process.Pid
	row := &scaleRow{Row: "scale", Trainers: n, Run: run, Fraction: frac, PerRound: m, ModelBytes: 4 * params2NN, Total: warm + rounds + 1, Warmup: warm}

	// The log: count warnings and errors, keep a few, and optionally a copy;
	// follow the live heap in the gctrace lines.
	var live struct {
		sync.Mutex
		last    int64 // after the latest collection
		max     int64 // the most after any collection since measuring began
		measure bool
	}
	var logWG sync.WaitGroup
	logWG.Add(1)
	go func() {
		defer logWG.Done()
		var keep io.Writer = io.Discard
		if logDir != "" {
			if f, err := os.Create(fmt.Sprintf("%s/aggregator-%d-trainers-%d-updates-run-%d.log", logDir, n, m, run)); err == nil {
				defer f.Close()
				keep = f
			}
		}
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seen := map[string]bool{}
		for sc.Scan() {
			l := sc.Text()
			fmt.Fprintln(keep, l)
			if m := gctraceRE.FindStringSubmatch(l); m != nil {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				live.Lock()
				live.last = n << 20
				if live.measure {
					live.max = max(live.max, live.last)
				}
				live.Unlock()
				continue
			}
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
				row.Warnings++
				msg := l
				if i := strings.Index(l, "msg="); i >= 0 {
					msg = l[i:]
				}
				if len(row.Samples) < 5 && !seen[msg] {
					seen[msg] = true
					row.Samples = append(row.Samples, truncate(msg, 300))
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()

	var samples []sample
	var allocStart int64 // go_memstats_alloc_bytes_total after the warm-up
	var allocRead bool
	var addr string
	var simOut []byte
	var simErr error
	simDone := make(chan struct{})
	simStarted := false
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20) // round lines list every trainer
	for sc.Scan() {
		l := sc.Text()
		if mm := listenRE.FindStringSubmatch(l); mm != nil && !simStarted {
			row.BaseRSS, _, _ = procMem(pid)
			simStarted = true
			addr = mm[1]
			sim := exec.CommandContext(ctx, simBin, "-aggregator", mm[1], "-n", strconv.Itoa(n))
			sim.Stderr = os.Stderr
			go func() {
				defer close(simDone)
				simOut, simErr = sim.Output()
			}()
			continue
		}
		if roundLineRE.MatchString(l) {
			s := sample{at: time.Now()}
			s.cpu, _ = procCPU(pid)
			s.rss, s.hwm, _ = procMem(pid)
			samples = append(samples, s)
			row.Completed++
			if row.Completed == warm {
				live.Lock()
				live.measure = true
				live.Unlock()
				allocStart, allocRead = memStats(ctx, addr)["alloc_bytes_total"]
			}
			if row.Completed == warm+rounds {
				live.Lock()
				row.LiveHeap = max(live.max, live.last)
				live.Unlock()
				ms := memStats(ctx, addr)
				row.HeapInuse = ms["heap_inuse_bytes"]
				row.HeapKept = ms["heap_idle_bytes"] - ms["heap_released_bytes"]
				row.Stacks = ms["stack_inuse_bytes"]
				if a, ok := ms["alloc_bytes_total"]; ok && allocRead {
					row.Allocated = a - allocStart
				}
			}
			continue
		}
		if strings.HasPrefix(l, "tasks assigned=") {
			row.Accounting = l
		}
		if doneLineRE.MatchString(l) {
			break
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	logWG.Wait()
	werr := agg.Wait()
	if simStarted {
		<-simDone
	}
	row.Seconds = time.Since(start).Seconds()
	if ee, ok := werr.(*exec.ExitError); ok {
		row.ExitCode = ee.ExitCode()
	} else if werr != nil {
		return nil, werr
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("timed out after %v (%d rounds done)", timeout, row.Completed)
	}
	row.Sim = json.RawMessage(strings.TrimSpace(string(simOut)))
	if len(row.Sim) == 0 {
		row.Sim = json.RawMessage("null")
	}
	if simErr != nil {
		progress("scale: simtrainer: %v", simErr)
	}
	if len(samples) < warm+rounds {
		return row, nil
	}
	samples = samples[warm-1 : warm+rounds] // the last warm-up round's line, then the measured ones
	var secs, cpus []float64
	for i := 1; i < len(samples); i++ {
		secs = append(secs, samples[i].at.Sub(samples[i-1].at).Seconds())
		cpus = append(cpus, samples[i].cpu-samples[i-1].cpu)
	}
	last := samples[len(samples)-1]
	row.Rounds = len(secs)
	row.RoundSecs, row.CPUPerRound = spreadOf(secs), spreadOf(cpus)
	row.RSS, row.HWM = last.rss, last.hwm
	return row, nil
}

// memStats reads the Go runtime's memory figures in bytes
// (go_memstats_NAME_bytes and go_memstats_NAME_bytes_total) from the
// aggregator's /metrics, keyed by what follows "go_memstats_"; it is empty
// if they cannot be read.
func memStats(ctx context.Context, addr string) map[string]int64 {
	out := map[string]int64{}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return out
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		name, isMem := strings.CutPrefix(name, "go_memstats_")
		if !ok || !isMem || !(strings.HasSuffix(name, "_bytes") || strings.HasSuffix(name, "_bytes_total")) {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err == nil {
			out[name] = int64(f)
		}
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
