package main

import (
	"bytes"
	"flag"
	"math"
	"math/rand/v2"
	"runtime"
	"time"

	"fedgather/internal/allreduce"
	"fedgather/internal/wire"
)

// aggregateRow is one line of "bench aggregate": folding updates into an
// allreduce.Accumulator (ours) against copy() of the same bytes (anchor),
// in GB/s of update bytes (10^9 bytes per second).
type aggregateRow struct {
	Row     string  `json:"row"` // "aggregate"
	Case    string  `json:"case"`
	Values  int     `json:"values"`
	Bytes   int     `json:"bytes"`
	Kernel  string  `json:"kernel"`  // the fold kernel compiled in and chosen for this CPU
	Ours    spread  `json:"ours"`    // Accumulator.Add, GB/s
	HubPath spread  `json:"hubpath"` // read the update out of its frame (wire.ReadTensor) and Add, GB/s
	Anchor  spread  `json:"anchor"`  // copy(), GB/s
	Ratio   spread  `json:"ratio"`   // ours/anchor per repeat
	HubRat  spread  `json:"hub_ratio"`
	Target  float64 `json:"target"`
	Repeats int     `json:"repeats"`
}

func runAggregate(args []string) error {
	fs := flag.NewFlagSet("aggregate", flag.ContinueOnError)
	repeats := fs.Int("repeats", 15, "measurements of each side")
	minTime := fs.Duration("min-time", 150*time.Millisecond, "length of one measurement")
	prof := profileFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	stopProf, err := prof()
	if err != nil {
		return err
	}
	defer stopProf()
	for _, c := range []struct {
		name string
		n    int
	}{{"0.8 MB (2NN, 199,210 values)", 199210}, {"64 MiB (16,777,216 values)", 16 << 20}} {
		row, err := measureAggregate(c.name, c.n, *repeats, *minTime)
		if err != nil {
			return err
		}
		if err := emit(row); err != nil {
			return err
		}
	}
	return nil
}

func measureAggregate(name string, n, repeats int, minTime time.Duration) (*aggregateRow, error) {
	progress("aggregate: %s", name)
	r := rand.New(rand.NewPCG(1, uint64(n)))
	update := make([]float32, n)
	for i := range update {
		update[i] = float32(r.NormFloat64() * 1e-3)
	}
	payload := append([]byte(nil), wire.Float32Bytes(update)...) // as received from the network
	decoded := make([]float32, n)
	dst := make([]byte, len(payload))
	const weight = 600 // one MNIST client of K=100
	acc, err := allreduce.NewAccumulator(n, allreduce.MaxTotalWeight)
	if err != nil {
		return nil, err
	}
	add := func() {
		if acc.Weight()+weight > allreduce.MaxTotalWeight {
			acc.Reset()
		}
		if err := acc.Add(update, weight); err != nil {
			panic(err)
		}
	}
	// What the hub does per update: wire.ReadTensor copies the payload
	// from the connection (here: from the frame's bytes) into a buffer,
	// and Add validates while it folds.
	var rd bytes.Reader
	hub := func() {
		rd.Reset(payload)
		if _, err := wire.ReadTensor(&rd, decoded); err != nil {
			panic(err)
		}
		add()
	}
	cp := func() { copy(dst, payload) }

	bytes := float64(len(payload))
	iters := calibrate(add, minTime)
	runtime.GC()
	var ours, hubs, anchor []float64
	for rep := range repeats {
		// Alternate which side goes first.
		order := []func(){
			func() { ours = append(ours, rate(add, iters, bytes)) },
			func() { anchor = append(anchor, rate(cp, iters, bytes)) },
			func() { hubs = append(hubs, rate(hub, iters, bytes)) },
		}
		if rep%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, f := range order {
			f()
		}
	}
	return &aggregateRow{
		Row: "aggregate", Case: name, Values: n, Bytes: len(payload), Kernel: allreduce.Kernel(),
		Ours: spreadOf(ours), HubPath: spreadOf(hubs), Anchor: spreadOf(anchor),
		Ratio: spreadOf(ratios(ours, anchor)), HubRat: spreadOf(ratios(hubs, anchor)),
		Target: 0.5, Repeats: repeats,
	}, nil
}

// calibrate returns how many calls of f take about d.
func calibrate(f func(), d time.Duration) int {
	f() // warm up: fault in pages, fill caches
	n := 1
	for {
		start := time.Now()
		for range n {
			f()
		}
		el := time.Since(start)
		if el >= d/4 || n >= 1<<24 {
			return max(1, int(math.Ceil(float64(n)*float64(d)/float64(max(el, time.Microsecond)))))
		}
		n *= 4
	}
}

// rate returns GB/s of calling f iters times, each processing bytes.
func rate(f func(), iters int, bytes float64) float64 {
	start := time.Now()
	for range iters {
		f()
	}
	return bytes * float64(iters) / time.Since(start).Seconds() / 1e9
}
