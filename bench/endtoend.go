package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"fedgather/bench/internal/benchfmt"
	"fedgather/internal/data"
	"fedgather/internal/model"
)

// endToEndRow is the line of "bench endtoend": rounds per second of the
// demo configuration (2NN, K=100, C=0.1, E=1, B=10, IID; the aggregator's
// -demo defaults) with 1 and with 2 trainer processes on this machine, and
// where a round's time goes.
type endToEndRow struct {
	Row     string  `json:"row"` // "endtoend"
	Rounds  int     `json:"rounds"`
	One     spread  `json:"one_trainer_rounds_per_s"`
	Two     spread  `json:"two_trainers_rounds_per_s"`
	Ratio   spread  `json:"ratio"` // two/one per repeat
	Target  float64 `json:"target"`
	Repeats int     `json:"repeats"`
	// In-process measurements, one thread, median of 5: what one round
	// needs at least.
	TaskSeconds   float64 `json:"task_seconds"`   // one client's local training (600 examples, E=1, B=10)
	DecodeSeconds float64 `json:"decode_seconds"` // decoding one client's shard (the trainer does it once per shard it receives)
	EvalSeconds   float64 `json:"eval_seconds"`   // evaluating the 10,000 test images on one thread
	// Per-round breakdown from the aggregator's round lines (median).
	OneRoundSecs spread `json:"one_round_seconds"`
	TwoRoundSecs spread `json:"two_round_seconds"`
	// CPU seconds per round over the measured rounds, from /proc: the
	// aggregator process, its trainer processes together, and everything
	// else on the machine (other users of the shared cores).
	OneAggCPU     spread       `json:"one_aggregator_cpu_per_round"`
	OneTrainerCPU spread       `json:"one_trainers_cpu_per_round"`
	OneOtherCores spread       `json:"one_other_load_cores"` // other processes' CPU seconds per second
	TwoAggCPU     spread       `json:"two_aggregator_cpu_per_round"`
	TwoTrainerCPU spread       `json:"two_trainers_cpu_per_round"`
	TwoOtherCores spread       `json:"two_other_load_cores"`
	Cores         int          `json:"cores"`
	Runs          []demoRunRow `json:"runs"` // every run, in order
}

// demoRunRow is one demo run.
type demoRunRow struct {
	Repeat     int     `json:"repeat"`
	Trainers   int     `json:"trainers"`
	RoundsPerS float64 `json:"rounds_per_s"`
	OtherCores float64 `json:"other_load_cores"`
}

// demoResult is one demo run's figures over its measured rounds.
type demoResult struct {
	rate       float64   // rounds per second
	secs       []float64 // secs= of each measured round line
	aggCPU     float64   // aggregator CPU seconds per round
	trainerCPU float64   // trainer processes' CPU seconds per round
	other      float64   // other processes' CPU seconds per wall second
}

// cpuSnap is the CPU used so far by the aggregator, its children and the
// whole machine.
type cpuSnap struct {
	at                 time.Time
	agg, trainers, sys float64
}

func snapCPU(pid int) cpuSnap {
	s := cpuSnap{at: time.Now()}
	s.agg, _ = procCPU(pid)
	for _, c := range children(pid) {
		v, _ := procCPU(c)
		s.trainers += v
	}
	s.sys, _ = systemBusy()
	return s
}

func runEndToEnd(args []string) error {
	fs := flag.NewFlagSet("endtoend", flag.ContinueOnError)
	agg := fs.String("aggregator", "", "aggregator binary (go build ./cmd/aggregator)")
	rounds := fs.Int("rounds", 20, "rounds per run (the first is a warm-up)")
	repeats := fs.Int("repeats", 5, "runs with each trainer count")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *agg == "" {
		return errors.New("-aggregator is required")
	}
	if *rounds < 3 {
		return errors.New("-rounds: want at least 3")
	}
	row := &endToEndRow{Row: "endtoend", Rounds: *rounds, Target: 1.7, Repeats: *repeats, Cores: runtime.NumCPU()}
	var one, two, oneSecs, twoSecs []float64
	var oneAgg, oneTr, oneOther, twoAgg, twoTr, twoOther []float64
	for rep := range *repeats {
		order := []int{1, 2}
		if rep%2 == 1 {
			order = []int{2, 1}
		}
		for _, n := range order {
			progress("endtoend: -demo -trainers %d -rounds %d (run %d of %d)", n, *rounds, rep+1, *repeats)
			d, err := demoRun(*agg, n, *rounds)
			if err != nil {
				return fmt.Errorf("%d trainers: %w", n, err)
			}
			row.Runs = append(row.Runs, demoRunRow{Repeat: rep + 1, Trainers: n, RoundsPerS: d.rate, OtherCores: d.other})
			if n == 1 {
				one = append(one, d.rate)
				oneSecs = append(oneSecs, d.secs...)
				oneAgg, oneTr, oneOther = append(oneAgg, d.aggCPU), append(oneTr, d.trainerCPU), append(oneOther, d.other)
			} else {
				two = append(two, d.rate)
				twoSecs = append(twoSecs, d.secs...)
				twoAgg, twoTr, twoOther = append(twoAgg, d.aggCPU), append(twoTr, d.trainerCPU), append(twoOther, d.other)
			}
		}
	}
	row.One, row.Two, row.Ratio = spreadOf(one), spreadOf(two), spreadOf(ratios(two, one))
	row.OneRoundSecs, row.TwoRoundSecs = spreadOf(oneSecs), spreadOf(twoSecs)
	row.OneAggCPU, row.OneTrainerCPU, row.OneOtherCores = spreadOf(oneAgg), spreadOf(oneTr), spreadOf(oneOther)
	row.TwoAggCPU, row.TwoTrainerCPU, row.TwoOtherCores = spreadOf(twoAgg), spreadOf(twoTr), spreadOf(twoOther)
	if err := measureParts(row); err != nil {
		return err
	}
	return emit(row)
}

var roundSecsRE = regexp.MustCompile(`^round (\d+)/\d+ .* secs=([0-9.]+) `)

// demoRun runs the demo with n trainers and measures the rounds after the
// first: rounds per second, timed by when the aggregator printed their
// lines, the secs= figure of each, and the CPU used per round.
func demoRun(bin string, n, rounds int) (*demoResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-demo", "-trainers", strconv.Itoa(n), "-min-trainers", strconv.Itoa(n),
		"-target", "0", "-rounds", strconv.Itoa(rounds), "-log-level", "warn")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &demoResult{}
	var first, last cpuSnap
	seen := 0
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := roundSecsRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		seen++
		snap := snapCPU(cmd.Process.Pid)
		if seen == 1 {
			first = snap
			continue
		}
		last = snap
		s, _ := strconv.ParseFloat(m[2], 64)
		d.secs = append(d.secs, s)
	}
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("aggregator -demo: %w", err)
	}
	if seen != rounds {
		return nil, fmt.Errorf("saw %d round lines, want %d", seen, rounds)
	}
	wall := last.at.Sub(first.at).Seconds()
	measured := float64(rounds - 1)
	d.rate = measured / wall
	d.aggCPU = (last.agg - first.agg) / measured
	d.trainerCPU = (last.trainers - first.trainers) / measured
	d.other = max(0, (last.sys-first.sys)-(last.agg-first.agg)-(last.trainers-first.trainers)) / wall
	return d, nil
}

// measureParts times, in this process on one thread, the pieces a demo
// round is made of.
func measureParts(row *endToEndRow) error {
	prev := runtime.GOMAXPROCS(1) // like each trainer process
	defer runtime.GOMAXPROCS(prev)
	train, test, err := data.LoadMNIST("datasets/mnist")
	if err != nil {
		return err
	}
	spec, err := model.Parse("2nn", train.Dim, train.Classes)
	if err != nil {
		return err
	}
	split, err := data.PartitionIID(train.Len(), 100, 1)
	if err != nil {
		return err
	}
	shard := train.Subset(split[0])
	enc, err := data.EncodeShard(shard)
	if err != nil {
		return err
	}
	params := make([]float32, spec.NumParams())
	spec.Init(params, 1)
	trainWS := model.NewWorkspace(spec, 128) // as internal/trainer
	evalWS := model.NewWorkspace(spec, 1000) // as internal/job
	local := make([]float32, len(params))
	timeIt := func(f func() error) (float64, error) {
		var ts []float64
		for range 5 {
			start := time.Now()
			if err := f(); err != nil {
				return 0, err
			}
			ts = append(ts, time.Since(start).Seconds())
		}
		return benchfmt.Median(ts), nil
	}
	if row.TaskSeconds, err = timeIt(func() error {
		copy(local, params)
		trainWS.SGD(local, shard, 1, 10, 0.1, 7)
		return nil
	}); err != nil {
		return err
	}
	if row.DecodeSeconds, err = timeIt(func() error {
		_, err := data.DecodeShard(enc, train.Dim, train.Classes, 1<<22)
		return err
	}); err != nil {
		return err
	}
	row.EvalSeconds, err = timeIt(func() error {
		evalWS.Evaluate(params, test)
		return nil
	})
	return err
}
