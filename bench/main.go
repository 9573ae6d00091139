// Command bench measures fedgather against its anchors for
// docs/PERFORMANCE.md. bench/run calls it once per part and then renders
// the table; each part prints JSON lines (see the part's file):
//
//	go run ./bench aggregate   # row 2: Accumulator.Add vs copy()
//	go run ./bench transport   # row 3: websocket scatter-gather vs raw TCP
//	go run ./bench scale -aggregator BIN -simtrainer BIN
//	                           # row 4: aggregator RSS and CPU with 10..1,000 trainers
//	go run ./bench endtoend -aggregator BIN
//	                           # row 5: demo rounds/s with 1 vs 2 trainers
//	go run ./bench report -dir DIR -command CMD -out docs/PERFORMANCE.md
//
// Every timing runs ours and its anchor in the same process or run,
// alternating, and reports the median with the min–max over the repeats:
// on a shared machine a slow spell then hits both sides.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"

	"fedgather/bench/internal/benchfmt"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "aggregate":
		err = runAggregate(args)
	case "transport":
		err = runTransport(args)
	case "scale":
		err = runScale(args)
	case "endtoend":
		err = runEndToEnd(args)
	case "report":
		err = runReport(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go run ./bench aggregate|transport|scale|endtoend|report [flags]   (see bench/main.go)")
	os.Exit(2)
}

// spread is a median with the min and max of repeated measurements.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func spreadOf(v []float64) spread {
	if len(v) == 0 {
		return spread{}
	}
	return spread{Median: benchfmt.Median(v), Min: slices.Min(v), Max: slices.Max(v)}
}

// ratios returns a[i]/b[i] for each repeat: the pairs were measured side by
// side, so their ratio is steadier than the ratio of the medians.
func ratios(a, b []float64) []float64 {
	r := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			r = append(r, a[i]/b[i])
		}
	}
	return r
}

// emit prints v as one JSON line on stdout.
func emit(v any) error {
	return json.NewEncoder(os.Stdout).Encode(v)
}

// progress reports on stderr what is being measured.
func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
}

// profileFlag adds -cpuprofile and -memprofile to fs; call the returned
// function after parsing to start profiling, and its result to stop.
func profileFlag(fs *flag.FlagSet) func() (stop func(), err error) {
	cpuPath := fs.String("cpuprofile", "", "write a CPU profile of the measurements to this file")
	memPath := fs.String("memprofile", "", "write an allocation profile of the measurements to this file (every allocation is sampled)")
	return func() (func(), error) {
		stopMem := func() {}
		if *memPath != "" {
			runtime.MemProfileRate = 1
			stopMem = func() {
				runtime.GC() // the profile shows allocations up to the latest collection
				f, err := os.Create(*memPath)
				if err == nil {
					err = pprof.Lookup("allocs").WriteTo(f, 0)
					_ = f.Close()
				}
				if err != nil {
					progress("memprofile: %v", err)
				}
			}
		}
		if *cpuPath == "" {
			return stopMem, nil
		}
		f, err := os.Create(*cpuPath)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		return func() {
			pprof.StopCPUProfile()
			_ = f.Close()
			stopMem()
		}, nil
	}
}
