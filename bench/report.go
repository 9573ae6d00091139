package main

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"fedgather/bench/internal/benchfmt"
	"fedgather/internal/coord"
)

// results is everything the parts wrote into the results directory.
type results struct {
	train     map[string][]benchfmt.TrainResult // by build: "gonum", "openblas", "pytorch"; one entry per run
	trainNote string
	aggregate []aggregateRow
	transport []transportRow
	scale     []scaleRow
	endtoend  []endToEndRow
	missing   []string
}

func runReport(args []string) error {
	fset := flag.NewFlagSet("report", flag.ContinueOnError)
	dir := fset.String("dir", "", "directory holding the parts' JSON lines (*.jsonl)")
	command := fset.String("command", "bash bench/run", "the command that produced the results, for the record")
	out := fset.String("out", "docs/PERFORMANCE.md", "file to write the report to (- for stdout only)")
	commit := fset.String("commit", "", "the commit measured, for the record")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("-dir is required")
	}
	r, err := loadResults(*dir)
	if err != nil {
		return err
	}
	doc := render(r, *command, *commit, measuredAt(*dir))
	if *out != "-" {
		if err := os.WriteFile(*out, []byte(doc), 0o644); err != nil {
			return err
		}
	}
	// The summary table on stdout.
	i := strings.Index(doc, "## Summary")
	j := strings.Index(doc, "\n## 1.")
	if i >= 0 && j > i {
		fmt.Print(doc[i:j])
	} else {
		fmt.Print(doc)
	}
	return nil
}

func loadResults(dir string) (*results, error) {
	r := &results{train: map[string][]benchfmt.TrainResult{}}
	files, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	slices.Sort(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 || line[0] != '{' {
				continue
			}
			var probe struct {
				Row  string `json:"row"`
				Impl string `json:"impl"`
			}
			if err := json.Unmarshal(line, &probe); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			var err error
			switch {
			case probe.Impl != "":
				var t benchfmt.TrainResult
				if err = json.Unmarshal(line, &t); err == nil {
					key := t.Build
					if t.Impl == "pytorch" {
						key = "pytorch"
					}
					r.train[key] = append(r.train[key], t)
				}
			case probe.Row == "aggregate":
				var a aggregateRow
				if err = json.Unmarshal(line, &a); err == nil {
					r.aggregate = append(r.aggregate, a)
				}
			case probe.Row == "transport":
				var t transportRow
				if err = json.Unmarshal(line, &t); err == nil {
					r.transport = append(r.transport, t)
				}
			case probe.Row == "scale":
				var s scaleRow
				if err = json.Unmarshal(line, &s); err == nil {
					r.scale = append(r.scale, s)
				}
			case probe.Row == "endtoend":
				var e endToEndRow
				if err = json.Unmarshal(line, &e); err == nil {
					r.endtoend = append(r.endtoend, e)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "train-note.txt")); err == nil {
		r.trainNote = strings.TrimSpace(string(b))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return r, nil
}

// f formats a number with about three significant digits.
func f(v float64) string {
	switch a := max(v, -v); {
	case a == 0:
		return "0"
	case a >= 10000:
		return commas(fmt.Sprintf("%.0f", v))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func commas(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// sp formats a spread as "median [min–max]".
func sp(s spread) string {
	if s.Min == s.Max {
		return f(s.Median)
	}
	return fmt.Sprintf("%s [%s–%s]", f(s.Median), f(s.Min), f(s.Max))
}

func ratioText(s spread) string {
	if s.Min == s.Max {
		return fmt.Sprintf("%.2f×", s.Median)
	}
	return fmt.Sprintf("%.2f× [%.2f–%.2f]", s.Median, s.Min, s.Max)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func mb(b int64) string { return f(float64(b) / 1e6) }

// grewText describes a growth of b bytes in MB: "grew by X MB", or "did
// not grow (X MB)" when it is not positive.
func grewText(b int64) string {
	if b > 0 {
		return "grew by " + mb(b) + " MB"
	}
	return "did not grow (" + mb(b) + " MB)"
}

// load formats a number of busy cores.
func load(v float64) string { return fmt.Sprintf("%.2f", max(v, 0)) }

func render(r *results, command, commit string, now time.Time) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Performance\n\n")
	at := ""
	if commit != "" {
		at = fmt.Sprintf(" at commit %s", commit)
	}
	w("Written by `%s`%s on %s (UTC). CPU: %s, %d logical CPUs; %s %s/%s.\n\n", command, at, now.Format("2006-01-02 15:04"), cpuModel(), runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	w("Every timing runs ours and its anchor side by side — in the same process, or in alternating runs — and repeats; ")
	w("a figure is the median, with the minimum and maximum over the repeats in brackets, and a ratio is the median of the per-repeat ratios. ")
	w("This is a shared two-core machine, so expect figures to move by 10–30%% between runs; the ratios move less. ")
	w("Targets come from the performance issue. Sections 1–5 give the detail and, for a missed target, where the time goes.\n\n")

	w("## Summary\n\n")
	w("| # | measure | ours | anchor | ratio | target | |\n|---|---|---|---|---|---|---|\n")
	summaryTrain(r, w)
	for _, a := range mainAggregate(r) {
		w("| 2 | aggregation, %s (GB/s of updates) | Accumulator.Add: %s | copy(): %s | %s | ≥ %.1f× | %s |\n",
			a.Case, sp(a.Ours), sp(a.Anchor), ratioText(a.Ratio), a.Target, verdict(a.Ratio.Median >= a.Target))
	}
	if len(r.aggregate) == 0 {
		w("| 2 | aggregation | not measured | | | ≥ 0.5× | |\n")
	}
	for _, t := range r.transport {
		w("| 3 | transport: %s scattered and gathered on loopback (MB/s) | websocket through the hub: %s | raw TCP: %s | %s | ≥ %.1f× | %s |\n",
			t.Case, sp(t.Hub), sp(t.Anchor), ratioText(t.Ratio), t.Target, verdict(t.Ratio.Median >= t.Target))
	}
	if len(r.transport) == 0 {
		w("| 3 | transport | not measured | | | ≥ 0.9× | |\n")
	}
	summaryScale(r, w)
	for _, e := range r.endtoend {
		w("| 5 | end-to-end demo (2NN, K=100, C=0.1, E=1, B=10; rounds/s; other processes' load in cores) | 2 trainers: %s (load %s) | 1 trainer: %s (load %s) | %s | ≥ %.1f× | %s |\n",
			sp(e.Two), load(e.TwoOtherCores.Median), sp(e.One), load(e.OneOtherCores.Median), ratioText(e.Ratio), e.Target, verdict(e.Ratio.Median >= e.Target))
	}
	if len(r.endtoend) == 0 {
		w("| 5 | end-to-end | not measured | | | ≥ 1.7× | |\n")
	}
	w("\n")
	sectionTrain(r, w)
	sectionAggregate(r, w)
	sectionTransport(r, w)
	sectionScale(r, w)
	sectionEndToEnd(r, w)
	return b.String()
}

// trainPairs matches each fedgather build's configurations with PyTorch's.
type trainPair struct {
	build, model string
	batch        int
	ours, torch  []benchfmt.TrainResult
}

func trainPairs(r *results) []trainPair {
	var out []trainPair
	torch := r.train["pytorch"]
	for _, build := range []string{"gonum", "purego", "openblas"} {
		var keys []string
		byKey := map[string]*trainPair{}
		for _, t := range r.train[build] {
			k := fmt.Sprintf("%s/%04d", t.Model, t.Batch)
			p := byKey[k]
			if p == nil {
				p = &trainPair{build: build, model: t.Model, batch: t.Batch}
				byKey[k] = p
				keys = append(keys, k)
			}
			p.ours = append(p.ours, t)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := byKey[k]
			for _, t := range torch {
				if t.Model == p.model && t.Batch == p.batch {
					p.torch = append(p.torch, t)
				}
			}
			out = append(out, *p)
		}
	}
	return out
}

// rates pools the per-run medians of repeated runs.
func rates(rows []benchfmt.TrainResult) (s spread, acc float64) {
	var v, a []float64
	for _, t := range rows {
		v = append(v, t.Median)
		a = append(a, t.Accuracy)
	}
	s = spreadOf(v)
	if len(rows) == 1 {
		s = spread{Median: rows[0].Median, Min: rows[0].Min, Max: rows[0].Max}
	}
	return s, benchfmt.Median(a)
}

func pairRatio(p trainPair) spread {
	var ours, torch []float64
	for _, t := range p.ours {
		ours = append(ours, t.Median)
	}
	for _, t := range p.torch {
		torch = append(torch, t.Median)
	}
	return spreadOf(ratios(ours, torch))
}

// trainTarget is the bar for a training pair, or 0 for none: the
// pure-Go builds — the default one (no cgo; gonum's BLAS and our Go
// assembly kernels) and, stricter, -tags purego (no assembly of ours) —
// ≥ 0.8× PyTorch for the 2NN at B=10; the fast (OpenBLAS) build ≥ 1.5× for the 2NN at B=10 and ≥ 1.0×
// for the 2NN at B=128 and for logreg at both sizes.
func trainTarget(p trainPair) float64 {
	switch {
	case (p.build == "gonum" || p.build == "purego") && p.model == "2nn" && p.batch == 10:
		return 0.8
	case p.build == "openblas" && p.model == "2nn" && p.batch == 10:
		return 1.5
	case p.build == "openblas":
		return 1.0
	}
	return 0
}

func modelName(m string) string {
	if m == "2nn" {
		return "2NN"
	}
	return m
}

func summaryTrain(r *results, w func(string, ...any)) {
	pairs := trainPairs(r)
	n := 0
	for _, p := range pairs {
		if len(p.torch) == 0 {
			continue
		}
		target := trainTarget(p)
		if p.model != "2nn" && target == 0 {
			continue
		}
		o, _ := rates(p.ours)
		t, _ := rates(p.torch)
		ratio := pairRatio(p)
		goal, met := "—", ""
		if target > 0 {
			goal, met = fmt.Sprintf("≥ %.1f×", target), verdict(ratio.Median >= target)
		}
		w("| 1 | training throughput, %s B=%d, %s build (samples/s) | %s | PyTorch: %s | %s | %s | %s |\n", modelName(p.model), p.batch, p.build, sp(o), sp(t), ratioText(ratio), goal, met)
		n++
	}
	if n == 0 {
		w("| 1 | training throughput vs PyTorch | **not measured** (%s) | | | — | |\n", orDefault(r.trainNote, "not run"))
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func sectionTrain(r *results, w func(string, ...any)) {
	w("## 1. Training throughput\n\n")
	w("One epoch of the 60,000 MNIST training images with plain minibatch SGD on one thread: `bench/train` (fedgather's `internal/model`) against `bench/pytorch_train.py` (PyTorch, one thread), in three builds: ")
	w("*gonum*, the default `go build` — no cgo, no C toolchain: gonum's BLAS and our Go-assembly AVX2 kernels (selected at start-up by CPUID; Go assembly is part of the Go toolchain, as in gonum's own BLAS); ")
	w("*purego*, `-tags purego` — none of our assembly, only portable Go kernels (gonum's BLAS as compiled); ")
	w("*openblas*, `-tags openblas` — cgo with Debian's OpenBLAS on one thread, when it builds. ")
	w("Their header comments define the measurement. bench/run alternates the programs, one timed epoch per configuration per run, and repeats; the figures pool those runs.\n\n")
	if r.trainNote != "" {
		w("%s\n\n", r.trainNote)
	}
	pairs := trainPairs(r)
	if len(pairs) == 0 {
		w("**Not measured**: the training programs were not there or did not run.\n\n")
		return
	}
	w("| build | model | B | fedgather samples/s | PyTorch samples/s | ratio | accuracy fedgather / PyTorch |\n|---|---|---|---|---|---|---|\n")
	for _, p := range pairs {
		o, oa := rates(p.ours)
		if len(p.torch) == 0 {
			w("| %s | %s | %d | %s | — | — | %.4f / — |\n", p.build, p.model, p.batch, sp(o), oa)
			continue
		}
		t, ta := rates(p.torch)
		w("| %s | %s | %d | %s | %s | %s | %.4f / %.4f |\n", p.build, p.model, p.batch, sp(o), sp(t), ratioText(pairRatio(p)), oa, ta)
	}
	if tr := r.train["pytorch"]; len(tr) > 0 {
		w("\nPyTorch build: %s.\n", tr[0].Build)
	}
	w("\n")
}

// mainAggregate returns the aggregation rows of the kernel this CPU uses
// by default: the assembly one when it was measured, else the generic one
// (bench/run also measures the generic kernel with -tags purego).
func mainAggregate(r *results) []aggregateRow {
	var fast, generic []aggregateRow
	for _, a := range r.aggregate {
		if a.Kernel == "generic" {
			generic = append(generic, a)
		} else {
			fast = append(fast, a)
		}
	}
	if len(fast) > 0 {
		return fast
	}
	return generic
}

func sectionAggregate(r *results, w func(string, ...any)) {
	w("## 2. Aggregation throughput\n\n")
	if len(r.aggregate) == 0 {
		w("**Not measured.**\n\n")
		return
	}
	w("`go run ./bench aggregate`: updates of float32 values folded into one `allreduce.Accumulator` with weight 600 (`Add`: range check and fold in one pass), against `copy()` of the same bytes, in the same process, alternating. ")
	w("GB/s are 10^9 bytes of update per second. The *read + fold* column adds what the hub does before folding: `wire.ReadTensor` copies the update out of its frame into a buffer (here from the frame's bytes, in the hub from the socket).\n\n")
	w("| size | kernel | Accumulator.Add | copy() | ratio | read + fold | read + fold / copy |\n|---|---|---|---|---|---|---|\n")
	for _, a := range r.aggregate {
		w("| %s | %s | %s | %s | %s | %s | %s |\n", a.Case, a.Kernel, sp(a.Ours), sp(a.Anchor), ratioText(a.Ratio), sp(a.HubPath), ratioText(a.HubRat))
	}
	w("\nThe issue measured about 2.4 GB/s before this work (a scalar loop, with three range checks per update on the hub's path); the *generic* rows are today's portable Go kernel, measured with `-tags purego`. ")
	w("What changed (`internal/allreduce`): an AVX2 kernel converts each value to fixed point exactly with the float64 trick `bits(v + 1.5·2^52) − bits(1.5·2^52)`, four float64 lanes per instruction and 32 values per loop iteration, selected at start-up by CPUID; ")
	w("the portable Go kernel computes the same IEEE operations and gives bit-identical sums (tested bit for bit, and `-tags purego` forces it). ")
	w("Validation and folding are one pass, fused in the kernel: each block of 32 values is range-checked and folded only if it is clean, so the update is read from memory once; at a bad value the kernel stops and the values already folded are subtracted again, which restores the sum exactly. ")
	w("Once per 4 KiB page of the update and of the sum, the kernel prefetches one line 32,768 values ahead, so that the page's TLB walk and the hardware prefetchers (which stop at page boundaries) start early. ")
	w("The scale rule changed to keep every term within the trick's exact range: frac = 51 − ⌈log2(MaxAbs·maxWeight)⌉, total weight at most 2^29 (see `NewAccumulator`). ")
	w("The exact int64 sum is stored as two planes of int32, sum = hi·2^32 + lo (a carry-save split): a term smaller than 2^31 that does not carry out of lo — nearly all of them, since update values are small next to the scale's bound — reads and writes only lo, so a fold moves 12 bytes per value (4 of update, 4 read and 4 written of lo) instead of 20; a block of 32 with a large value or a carry takes an exact 64-bit path over both planes. (lo starts 64 KiB into its buffer in large accumulators: with the update and lo at the same address modulo the cache's way size, the two streams evicted each other and the fold ran at a third of its speed.)\n\n")
	for _, a := range mainAggregate(r) {
		if a.Ratio.Median >= a.Target {
			continue
		}
		w("**%s misses the %.1f× target.** The fold is a read-modify-write of the sum's low plane: per value it reads 4 bytes of update and 4 of sum and writes 4 of sum, 12 bytes of memory traffic, where copy() reads 4 and writes 4 (and at this size Go's memmove uses non-temporal stores, so it does not read the destination). ", a.Case, a.Target)
		w("Once update and sum no longer fit in the caches, both are bound by memory bandwidth, and at equal bandwidth the traffic alone predicts 8/12 = 0.67×; measured: %.2f×.\n\n", a.Ratio.Median)
	}
}

// tripMs is the time of one round trip, in ms, at rate MB/s.
func tripMs(bytes int, rate float64) string {
	if rate <= 0 {
		return "—"
	}
	return f(float64(bytes) / (rate * 1e6) * 1e3)
}

func sectionTransport(r *results, w func(string, ...any)) {
	w("## 3. Transport\n\n")
	if len(r.transport) == 0 {
		w("**Not measured.**\n\n")
		return
	}
	w("`go run ./bench transport`: one 2NN model (796,840 bytes) sent to a trainer and one update of the same size sent back, over loopback, in one process; MB/s are 10^6 payload bytes per second over both directions (so 1.59 MB per round trip). ")
	w("The paths are described in `bench/transport.go`; in short: *hub* is a real `coord.Hub` running one-task rounds (`RunRound`) for a protocol-only trainer that reads each model straight into a tensor and answers at once; *hub, real trainer* the same with `internal/trainer` holding a one-example shard; the *websocket pair* rows are the bare frames without the hub; *raw TCP* writes and reads back the same bytes with `io.ReadFull`.\n\n")
	for _, t := range r.transport {
		w("| path | MB/s | ms per round trip | / raw TCP |\n|---|---|---|---|\n")
		w("| hub (ours) | %s | %s | %s |\n", sp(t.Hub), tripMs(t.Bytes, t.Hub.Median), ratioText(t.Ratio))
		if t.Real.Median > 0 {
			w("| hub, real trainer | %s | %s | %s |\n", sp(t.Real), tripMs(t.Bytes, t.Real.Median), ratioText(t.RealRat))
		}
		w("| websocket pair, frames read into a buffer and copied out (`wire.ReadFloat32s`) | %s | %s | %s |\n", sp(t.Wire), tripMs(t.Bytes, t.Wire.Median), ratioText(t.WireRat))
		w("| websocket pair, payload read straight into the tensor and checked (`wire.ReadFiniteTensor`; `wire.ReadTensor` + range check) | %s | %s | %s |\n", sp(t.Direct), tripMs(t.Bytes, t.Direct.Median), ratioText(t.DirRat))
		w("| the same, with the trainer's buffers (1 MiB to write: an update leaves as one frame) | %s | %s | %s |\n", sp(t.Big), tripMs(t.Bytes, t.Big.Median), ratioText(t.BigRat))
		if t.Bare.Median > 0 {
			w("| the same without any check: the websocket framing alone | %s | %s | %s |\n", sp(t.Bare), tripMs(t.Bytes, t.Bare.Median), ratioText(t.BareRat))
		}
		if t.Checked.Median > 0 {
			w("| raw TCP, each side checking the values for NaN/Inf (and range) as they arrive | %s | %s | %s |\n", sp(t.Checked), tripMs(t.Bytes, t.Checked.Median), ratioText(t.CheckRat))
		}
		w("| raw TCP (anchor) | %s | %s | 1 |\n\n", sp(t.Anchor), tripMs(t.Bytes, t.Anchor.Median))
		w("%d round trips per measurement, %d measurements of each path in rotating order.\n\n", t.Trips, t.Repeats)
		if t.Ratio.Median >= t.Target {
			continue
		}
		w("**The target (%.1f×) is missed.** Reading the table upwards from raw TCP: ", t.Target)
		if t.Checked.Median > 0 {
			w("checking every value as it arrives, piece by piece while each is in cache and while the sender writes the next, leaves raw TCP at %s. ", ratioText(t.CheckRat))
		}
		if t.Checked.Median > 0 && t.Big.Median > t.Checked.Median {
			w("(In this run raw TCP with checks came out slower than the websocket pair with the same checks, below, though it does a subset of the pair's work: take that row as disturbed by other load.) ")
		}
		if t.Bare.Median > 0 {
			w("The websocket framing alone, with no check at all, reaches %s; with our checks the same pair reaches %s", ratioText(t.BareRat), ratioText(t.BigRat))
			if t.Bare.Median < t.Target*t.Anchor.Median && t.Big.Median >= 0.9*t.Bare.Median {
				w(", so the gap is mostly the framing, not the validation")
			}
			w(". ")
		}
		w("A client frame must be masked (RFC 6455): gorilla copies the update through its write buffer and XOR-s it a word at a time (`maskBytes`), and the server XOR-s it back after each read; with 64 KiB client buffers an update also leaves as 13 frames and 13 writes (%s). ", ratioText(t.DirRat))
		w("(A one-off experiment on 2026-11-25, not reproducible from this repository: with gorilla patched to use an all-zero mask key and skip the XOR — not a valid client — a bare pair with 1 MiB client buffers reached 0.81× and 0.82× of raw TCP in two runs; even with masking free, gorilla's framing and buffered reads stayed below 0.9× on that machine.) ")
		w("Reading frames into a buffer before copying the tensor out costs another copy per direction (%s). ", ratioText(t.WireRat))
		w("The hub then adds its work per round, about %s ms over the best pair — in a CPU profile (`go run ./bench transport -only hub -cpuprofile FILE`): the fold and the mean, the round's copy of the model, the task and pull frames with their JSON headers, and the wake-ups of the round's goroutines. ",
			diffMs(t.Bytes, t.Hub.Median, t.Big.Median))
		if t.Real.Median > 0 {
			w("The real trainer adds its own per-task work on top (copying the model into its local weights, preparing the layers, computing Δw), about %s ms. ", diffMs(t.Bytes, t.Real.Median, t.Hub.Median))
		}
		if t.Bare.Median > 0 {
			w("A whole round through the hub does more than move bytes, and over gorilla/websocket the bare frames themselves reach %s of raw TCP here.", ratioText(t.BareRat))
		}
		w("\n\n")
	}
}

// diffMs is how many ms per round trip rate a takes more than rate b.
func diffMs(bytes int, a, b float64) string {
	if a <= 0 || b <= 0 {
		return "—"
	}
	return f(float64(bytes) * (1/a - 1/b) / 1e6 * 1e3)
}

func summaryScale(r *results, w func(string, ...any)) {
	gs := scaleGrowths(r)
	if len(gs) == 0 {
		w("| 4 | scale: aggregator RSS growth, 10 → 1,000 updates per round | not measured | | | < 2 models | |\n")
		return
	}
	g := gs[len(gs)-1]
	w("| 4 | scale: aggregator RSS growth with %d trainers, %d → %d updates per round (MB; median run%s) | %s | one model: %s | %.1f models | < 2 models | %s |\n",
		g.trainers, g.lo.PerRound, g.hi.PerRound, runsText(g), sp(g.runs), mb(g.model), g.ratio, verdict(g.ratio < 2))
	held := true
	for _, s := range r.scale {
		if s.Trainers == g.trainers && (s.Warnings > 0 || s.ExitCode != 0 || s.Completed != s.Total) {
			held = false
		}
	}
	w("| 4 | scale: %d trainers held, every round completed, no warning or error in the aggregator log | %s | | | yes | %s |\n", g.trainers, yesNo(held), verdict(held))
}

// runsText says over how many runs a growth is the median: " of 3", or
// "" for one run.
func runsText(g growth) string {
	if g.runs.Min == g.runs.Max {
		return ""
	}
	return fmt.Sprintf(" [min–max] of %d", g.count)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

type growth struct {
	trainers int
	lo, hi   scaleRow // the run whose growth is the median
	growth   int64    // the median growth, in bytes
	runs     spread   // growth over the runs, in MB
	count    int      // runs
	model    int64
	ratio    float64 // median growth in model sizes
}

// scaleGrowths compares, for each number of trainers measured, what the
// rounds added to RSS (RSS − base) between the fewest and the most updates
// per round, run by run (the first run of each configuration with the
// first of the other, and so on), and keeps the median run; ordered by
// trainers.
func scaleGrowths(r *results) []growth {
	by := map[int][]scaleRow{}
	var ns []int
	for _, s := range r.scale {
		if by[s.Trainers] == nil {
			ns = append(ns, s.Trainers)
		}
		by[s.Trainers] = append(by[s.Trainers], s)
	}
	slices.Sort(ns)
	var out []growth
	for _, n := range ns {
		rows := by[n]
		fewest, most := rows[0].PerRound, rows[0].PerRound
		for _, s := range rows {
			fewest, most = min(fewest, s.PerRound), max(most, s.PerRound)
		}
		if fewest == most {
			continue
		}
		type pair struct{ lo, hi scaleRow }
		runs := map[int]*pair{}
		var order []int
		for _, s := range rows {
			if s.PerRound != fewest && s.PerRound != most {
				continue
			}
			p := runs[s.Run]
			if p == nil {
				p = &pair{}
				runs[s.Run] = p
				order = append(order, s.Run)
			}
			if s.PerRound == fewest {
				p.lo = s
			} else {
				p.hi = s
			}
		}
		var gs []growth
		for _, run := range order {
			p := runs[run]
			if p.lo.Row == "" || p.hi.Row == "" {
				continue
			}
			gs = append(gs, growth{trainers: n, lo: p.lo, hi: p.hi, growth: (p.hi.RSS - p.hi.BaseRSS) - (p.lo.RSS - p.lo.BaseRSS), model: p.hi.ModelBytes})
		}
		if len(gs) == 0 {
			continue
		}
		slices.SortFunc(gs, func(a, b growth) int { return cmp.Compare(a.growth, b.growth) })
		mbs := make([]float64, len(gs))
		for i, g := range gs {
			mbs[i] = float64(g.growth) / 1e6
		}
		g := gs[(len(gs)-1)/2] // the median run (the lower middle one of an even number)
		g.runs = spreadOf(mbs)
		g.runs.Median = float64(g.growth) / 1e6
		g.count = len(gs)
		g.ratio = float64(g.growth) / float64(g.model)
		out = append(out, g)
	}
	return out
}

func sectionScale(r *results, w func(string, ...any)) {
	w("## 4. Scale\n\n")
	if len(r.scale) == 0 {
		w("**Not measured.**\n\n")
		return
	}
	rounds := r.scale[0].Rounds
	w("`go run ./bench scale`: the real aggregator binary (`-clients 1000 -fraction m/1000 -min-trainers N`, 2NN) with N simulated trainers from `bench/simtrainer` — N real websocket connections in one process speaking the real protocol and answering every task at once with a small fixed update. ")
	runs := 1
	for _, s := range r.scale {
		runs = max(runs, s.Run)
	}
	if runs > 1 {
		w("Each configuration runs %d times, every configuration once before any twice (`-repeats`). ", runs)
	}
	w("Each run starts with ⌈N/m⌉+1 warm-up rounds (connections, first shard transfers, and at least one task for every trainer, so that every connection has carried frames whatever m), then %d measured rounds, then one more round during which the aggregator's `/metrics` is read. The aggregator runs with `GOGC=25`, so that its heap tracks what the rounds need rather than what loading MNIST left behind. ", rounds)
	w("CPU is the aggregator's user+system time per measured round from `/proc/PID/stat`; *allocated* is what the aggregator's Go heap allocated over the measured rounds (`go_memstats_alloc_bytes_total`, read from `/metrics` after the warm-up and during the extra round), per update: the garbage a round leaves for the collector (it includes the first of those two reads of `/metrics`, about 0.1–0.3 MB, which weighs most where a round carries few updates). RSS and peak RSS (VmRSS, VmHWM) are from `/proc/PID/status` after the last measured round; *base* is VmRSS once the aggregator listens, with MNIST loaded and the 1,000 shards encoded, so *RSS − base* is what the trainers and rounds added (the peak mostly records start-up). *Live heap* is the most any garbage collection during the measured rounds kept (or the last one's, if none ran; `GODEBUG=gctrace=1`), *heap in use* the Go runtime's `go_memstats_heap_inuse_bytes` (allocated, touched or not, garbage included), *free heap kept* its free heap not yet returned to the system (`heap_idle − heap_released`), and *stacks* its goroutine stacks (`stack_inuse`), these three read from `/metrics` during the extra round. ")
	w("*Warnings* counts aggregator log lines at level WARN or ERROR. The simulator's *done / closed / failed* count connections ended by a `done` frame, closed by the aggregator without one, or ended by an error.\n\n")
	w("| trainers | updates/round | run | s/round | aggregator CPU s/round | CPU ms/update | allocated kB/update | base RSS MB | RSS MB | RSS − base MB | peak RSS MB | live heap MB | heap in use MB | free heap kept MB | stacks MB | warnings | rounds done | connections done / closed / failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.scale {
		var st struct{ Done, Closed, Failures int64 }
		_ = json.Unmarshal(s.Sim, &st)
		alloc := "—"
		if s.Allocated > 0 && s.Rounds > 0 {
			alloc = f(float64(s.Allocated) / float64(s.Rounds*s.PerRound) / 1e3)
		}
		w("| %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d/%d | %d / %d / %d |\n", s.Trainers, s.PerRound, max(s.Run, 1), sp(s.RoundSecs), sp(s.CPUPerRound), f(1e3*s.CPUPerRound.Median/float64(s.PerRound)), alloc,
			mb(s.BaseRSS), mb(s.RSS), mb(s.RSS-s.BaseRSS), mb(s.HWM), mb(s.LiveHeap), mb(s.HeapInuse), mb(s.HeapKept), mb(s.Stacks), s.Warnings, s.Completed, s.Total, st.Done, st.Closed, st.Failures)
	}
	w("\n")
	for _, s := range r.scale {
		for _, m := range s.Samples {
			w("- %d trainers, %d updates/round, log: `%s`\n", s.Trainers, s.PerRound, strings.ReplaceAll(m, "`", "'"))
		}
	}
	gs := scaleGrowths(r)
	if len(gs) == 0 {
		return
	}
	w("Growth of the aggregator's memory from the fewest to the most updates per round, with the same number of trainers connected (target: under 2 model sizes):\n\n")
	w("The growth is taken run by run, and the median run is shown with the minimum and maximum over the runs; the other columns are that median run's.\n\n")
	w("| trainers | updates/round | RSS growth (RSS − base) MB | in models | live-heap growth MB | in models | heap-in-use growth MB | free-heap-kept growth MB | stacks growth MB |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, g := range gs {
		lg := g.hi.LiveHeap - g.lo.LiveHeap
		w("| %d | %d → %d | %s | %.1f | %s | %.1f | %s | %s | %s |\n", g.trainers, g.lo.PerRound, g.hi.PerRound, sp(g.runs), g.ratio, mb(lg), float64(lg)/float64(g.model),
			mb(g.hi.HeapInuse-g.lo.HeapInuse), mb(g.hi.HeapKept-g.lo.HeapKept), mb(g.hi.Stacks-g.lo.Stacks))
	}
	top := gs[len(gs)-1]
	w("\nBoth measures move by several MB from run to run (the Go runtime returns freed memory to the system in its own time, and collections come when they come), which is more than two model sizes, so only growth well beyond that is significant; `TestGatherMemoryIsOneModel` in `internal/allreduce` shows, exactly, that the fold itself allocates nothing per update.\n\n")
	// What each connection costs, from the runs with the fewest updates.
	var few, many *scaleRow
	for i := range r.scale {
		s := &r.scale[i]
		if few == nil || s.Trainers < few.Trainers || (s.Trainers == few.Trainers && s.PerRound < few.PerRound) {
			few = s
		}
		if many == nil || s.Trainers > many.Trainers || (s.Trainers == many.Trainers && s.PerRound < many.PerRound) {
			many = s
		}
	}
	if few != nil && many != nil && many.Trainers > few.Trainers {
		n := float64(many.Trainers - few.Trainers)
		per := float64((many.RSS-many.BaseRSS)-(few.RSS-few.BaseRSS)) / n
		w("Connections themselves cost memory too: with %d updates per round, going from %d to %d trainers adds %s MB of RSS, about %s kB per trainer once its connection has carried frames",
			many.PerRound, few.Trainers, many.Trainers, mb((many.RSS-many.BaseRSS)-(few.RSS-few.BaseRSS)), f(per/1e3))
		if many.HeapInuse > 0 && few.HeapInuse > 0 {
			w(", of which goroutine stacks %s kB and heap in use %s kB (the connection's %d KiB read buffer, its queue of frames, its header decoder, its goroutines and timers; a write buffer is borrowed from a shared pool only while a frame is written)",
				f(float64(many.Stacks-few.Stacks)/n/1e3), f(float64(many.HeapInuse-few.HeapInuse)/n/1e3), coord.BufferSize>>10)
		}
		w(".\n\n")
	}

	if top.ratio < 2 {
		w("The gather streams: memory does not grow with the number of updates.\n\n")
	} else {
		w("**The target is missed**, and not by the accumulator, which is one model-sized buffer per round whatever the number of updates (`TestGatherMemoryIsOneModel` shows exactly that the fold allocates nothing). ")
		lg := float64(top.hi.LiveHeap-top.lo.LiveHeap) / float64(top.model)
		w("Updates are read off the network into a fixed set of %d model-sized buffers (`coord.UpdateReads`, allocated on first use), the other connections' data waiting in their sockets, so in-flight updates hold at most that many models — which is itself more than the target's two. ", coord.UpdateReads)
		switch {
		case lg > 0.05:
			w("The live heap grew by %.1f model sizes. ", lg)
		case lg < -0.05:
			w("The live heap did not grow (it was %s MB smaller). ", mb(top.lo.LiveHeap-top.hi.LiveHeap))
		default:
			w("The live heap did not grow. ")
		}
		inuse, kept, stacks := top.hi.HeapInuse-top.lo.HeapInuse, top.hi.HeapKept-top.lo.HeapKept, top.hi.Stacks-top.lo.Stacks
		w("RSS grew by %.1f model sizes (%s MB). Read from the runtime (during the extra round, a moment after RSS, so the parts need not add up exactly): heap in use %s, free heap not yet returned to the system %s, goroutine stacks %s. ",
			top.ratio, mb(top.growth), grewText(inuse), grewText(kept), grewText(stacks))
		if inuse >= max(kept, stacks) && inuse > 0 {
			w("Heap in use counts garbage not yet collected: the collector lets the heap grow past the live heap before it collects, by a quarter of it here (the aggregator runs with `GOGC=25`). With %d updates per round the heap in use was %s MB over a live heap of %s MB; with %d, %s MB over %s MB. ",
				top.lo.PerRound, mb(top.lo.HeapInuse), mb(top.lo.LiveHeap), top.hi.PerRound, mb(top.hi.HeapInuse), mb(top.hi.LiveHeap))
			loA, hiA := top.lo.Allocated, top.hi.Allocated
			switch {
			case loA <= 0 || hiA <= 0:
				w("The more updates a round carries, the more garbage it makes, so the further the heap may have grown towards its next collection when RSS is read")
			case hiA > 2*loA:
				w("Over the measured rounds the aggregator allocated %s MB with %d updates per round against %s MB with %d (*allocated* above): the more updates per round, the further the heap has grown towards its next collection when RSS is read",
					mb(hiA), top.hi.PerRound, mb(loA), top.lo.PerRound)
			default:
				w("Yet over the measured rounds the aggregator allocated about as much with %d updates per round as with %d (%s MB against %s MB, *allocated* above, a /metrics read included): where the heap in use stood when RSS was read depends on when the last collection ran more than on the number of updates",
					top.hi.PerRound, top.lo.PerRound, mb(hiA), mb(loA))
			}
			if kept > 0 {
				w(", and the runtime keeps freed pages a while before returning them")
			}
			w(".")
		}
		w("\n\n")
	}
	w("Aggregator CPU per update is about %s ms at %d updates per round with %d trainers (reading the update off its socket, the hub's bookkeeping, and the model, shard and task frames sent back)", f(1e3*top.hi.CPUPerRound.Median/float64(top.hi.PerRound)), top.hi.PerRound, top.trainers)
	if m := mainAggregate(r); len(m) > 0 && m[0].Ours.Median > 0 {
		a := m[0]
		w("; the fold itself is %s ms (section 2)", f(float64(a.Bytes)/a.Ours.Median/1e6))
	}
	w(".\n\n")
	closed := int64(0)
	for _, s := range r.scale {
		var st struct{ Closed int64 }
		_ = json.Unmarshal(s.Sim, &st)
		closed += st.Closed
	}
	// The run with the most re-issued tasks, from its accounting line.
	var reissued int64
	var worst scaleRow
	for _, s := range r.scale {
		for _, kv := range strings.Fields(s.Accounting) {
			if v, ok := strings.CutPrefix(kv, "reissued="); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > reissued {
					reissued, worst = n, s
				}
			}
		}
	}
	if closed > 0 {
		w("A finding for the owners of `cmd/aggregator` and `internal/coord`: at the end of a job the aggregator exits before its connection writers have flushed the `done` frames (`Hub.Finish` only queues them), so many trainers see the connection drop instead of `done` (the *closed* column); a real trainer then reconnects with back-off to an aggregator that is gone instead of exiting. Waiting for the writers to drain (with a bound) before exiting would fix it.\n\n")
	}
	if reissued > 0 {
		w("Tasks issued again: with %d trainers and %d updates per round, %d tasks outlived the derived deadline (2 × the median task time, at least 50 ms) because the aggregator itself was the bottleneck, and were re-issued; their second copies arrive as duplicates or stale updates, adding load where there is least to spare. ", worst.Trainers, worst.PerRound, reissued)
		w("The hub issues no copies while every update buffer is taken (the aggregator is then behind in reading results), but it does while it is behind in writing models: a copy held back then would also be held back from a trainer on a slow link, the straggler copies are for. That run's task accounting: `%s`.\n\n", worst.Accounting)
	}
}

func sectionEndToEnd(r *results, w func(string, ...any)) {
	w("## 5. End-to-end\n\n")
	if len(r.endtoend) == 0 {
		w("**Not measured.**\n\n")
		return
	}
	e := r.endtoend[0]
	w("`go run ./bench endtoend`: `aggregator -demo -trainers N -min-trainers N -target 0 -rounds %d` (2NN, K=100, C=0.1, E=1, B=10, IID; each trainer process runs with GOMAXPROCS=1) for N = 1 and 2, alternating, %d runs each. ", e.Rounds, e.Repeats)
	w("Rounds/s is over rounds 2–%d, timed by when the aggregator printed their lines. CPU per round is from `/proc` for the aggregator and for its trainer processes; *other load* is the CPU the rest of the machine used meanwhile (busy time from `/proc/stat` minus ours), in cores.\n\n", e.Rounds)
	w("| trainers | rounds/s | s/round (round lines) | aggregator CPU s/round | trainers' CPU s/round | other load, cores |\n|---|---|---|---|---|---|\n")
	w("| 1 | %s | %s | %s | %s | %s [%s–%s] |\n", sp(e.One), sp(e.OneRoundSecs), sp(e.OneAggCPU), sp(e.OneTrainerCPU), load(e.OneOtherCores.Median), load(e.OneOtherCores.Min), load(e.OneOtherCores.Max))
	w("| 2 | %s | %s | %s | %s | %s [%s–%s] |\n\n", sp(e.Two), sp(e.TwoRoundSecs), sp(e.TwoAggCPU), sp(e.TwoTrainerCPU), load(e.TwoOtherCores.Median), load(e.TwoOtherCores.Min), load(e.TwoOtherCores.Max))
	met := e.Ratio.Median >= e.Target
	w("Speed-up with 2 trainers: %s (target ≥ %.1f×, %s) on %d cores.\n\n", ratioText(e.Ratio), e.Target, verdict(met), e.Cores)
	w("Parts of a round, timed in one process on one thread (median of 5): one client's local training (600 examples, E=1, B=10) %s ms; decoding one client's shard (a trainer does it once per shard it receives) %s ms; evaluating the 10,000 test images %s ms (scattered over the trainers as 10 eval tasks by default).\n\n",
		f(e.TaskSeconds*1e3), f(e.DecodeSeconds*1e3), f(e.EvalSeconds*1e3))
	if e.One.Median <= 0 {
		return
	}
	wall1 := 1 / e.One.Median
	tr1, tr2 := e.OneTrainerCPU.Median, e.TwoTrainerCPU.Median
	agg2 := e.TwoAggCPU.Median
	free := float64(e.Cores) - e.TwoOtherCores.Median
	floor2 := (tr2 + agg2) / max(free, 0.1)
	w("Where the time goes: with one trainer a round takes %s ms of wall time; the trainer computes %s ms of it (training, evaluation, shard decoding) while the aggregator uses %s ms of CPU, mostly on the other core. ",
		f(wall1*1e3), f(tr1*1e3), f(e.OneAggCPU.Median*1e3))
	more := ""
	if tr2 > 1.03*tr1 {
		more = ", more than one trainer's, largely because each decodes its own copy of the shards it is sent"
	}
	w("With two trainers the two trainers (%s ms of CPU per round together%s) and the aggregator (%s ms) share about %.1f free cores: at least (%s + %s) / %.1f = %s ms per round, so at most %.2f× the one-trainer rate. ",
		f(tr2*1e3), more, f(agg2*1e3), free, f(tr2*1e3), f(agg2*1e3), free, f(floor2*1e3), wall1/floor2)
	if e.Two.Median > 0 {
		wall2 := 1 / e.Two.Median
		w("Measured: %s ms per round. ", f(wall2*1e3))
		if wall2 > 1.05*floor2 {
			w("The difference is waiting: each round ends with one gather (its training tasks and the eval tasks of the previous version, in one queue), which ends only when its last task is in, while the other trainer idles; and the aggregator's step between two rounds is on the critical path. ")
		} else {
			w("The runs sit at that bound: they are limited by the CPU available. ")
		}
	}
	perUpdate := ""
	for _, s := range r.scale {
		if s.PerRound >= 1000 && s.CPUPerRound.Median > 0 {
			perUpdate = fmt.Sprintf(": about %s ms of CPU per update", f(1e3*s.CPUPerRound.Median/float64(s.PerRound)))
			break
		}
	}
	w("The aggregator's share is mostly its work per update and per round (section 4%s; section 3 for a round's fixed costs)", perUpdate)
	if more != "" {
		w("; a shard cache shared by the trainers of one machine would cut the duplicate decoding")
	}
	w(". ")
	// The runs by repeat, with the other load during each; "quiet" repeats
	// had the machine otherwise idle.
	w("\n\nRuns by repeat, with the other load during each:\n\n| repeat | 1 trainer rounds/s (other load) | 2 trainers rounds/s (other load) | ratio |\n|---|---|---|---|\n")
	var quiet []float64
	pairs := 0
	for rep := 1; rep <= e.Repeats; rep++ {
		var a, b *demoRunRow
		for i := range e.Runs {
			if e.Runs[i].Repeat == rep && e.Runs[i].Trainers == 1 {
				a = &e.Runs[i]
			}
			if e.Runs[i].Repeat == rep && e.Runs[i].Trainers == 2 {
				b = &e.Runs[i]
			}
		}
		if a == nil || b == nil || a.RoundsPerS <= 0 {
			continue
		}
		pairs++
		ratio := b.RoundsPerS / a.RoundsPerS
		w("| %d | %s (%s) | %s (%s) | %.2f× |\n", rep, f(a.RoundsPerS), load(a.OtherCores), f(b.RoundsPerS), load(b.OtherCores), ratio)
		if a.OtherCores < 0.15 && b.OtherCores < 0.15 {
			quiet = append(quiet, ratio)
		}
	}
	w("\n")
	switch {
	case met:
		w("The target is met.\n\n")
	case len(quiet) == pairs && pairs > 0:
		w("**The target is missed**, on a machine otherwise idle in every repeat (%.2f×–%.2f×): two cores hold two trainers *and* the aggregator, which leaves the bound computed above little room, and the wait at the end of each round's gather takes most of the rest", slices.Min(quiet), slices.Max(quiet))
		if slices.Max(quiet) >= e.Target {
			w("; some runs land above the target and some below")
		}
		w(".\n\n")
	case len(quiet) > 0 && slices.Max(quiet) >= e.Target:
		w("**The median misses the target, but the repeats with the machine otherwise idle reach it** (%.2f×–%.2f×): the misses come from other processes taking CPU from the two-trainer runs on this shared machine.\n\n", slices.Min(quiet), slices.Max(quiet))
	case len(quiet) > 0:
		w("**The target is missed** even in the repeats with the machine otherwise idle (%.2f×–%.2f×): two cores hold two trainers *and* the aggregator, which bounds the speed-up as computed above, and the wait at the end of each round's gather takes the rest.\n\n", slices.Min(quiet), slices.Max(quiet))
	default:
		w("**The target is missed, and no repeat had the machine to itself**: other processes kept %s cores busy on average during the two-trainer runs (median), leaving about %.1f cores for an aggregator and two trainers whose work needs two; rerun `bash bench/run endtoend` on an idle machine to check the target.\n\n", load(e.TwoOtherCores.Median), free)
	}
}

// measuredAt is when the results in dir were written: the newest file's
// time, or now if there is none.
func measuredAt(dir string) time.Time {
	var at time.Time
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.ModTime().After(at) {
			at = info.ModTime()
		}
	}
	if at.IsZero() {
		at = time.Now()
	}
	return at.UTC()
}
