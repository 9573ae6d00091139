// Command train measures how fast fedgather's model package trains on MNIST,
// for comparison with the PyTorch anchor bench/pytorch_train.py, which runs
// the same configurations and prints the same format.
//
//	go run ./bench/train                  # default build: no cgo (gonum BLAS, our Go assembly kernels)
//	go run -tags purego ./bench/train     # no assembly of ours: portable Go kernels
//	go run -tags openblas ./bench/train   # OpenBLAS build (cgo)
//
// For each configuration (model logreg or 2nn, batch size B) it trains one
// epoch of the 60,000 MNIST training images with plain minibatch SGD
// (lr 0.1, float32, a fresh shuffle per epoch, the last partial batch
// included), from a fresh model initialised with the same seed each time,
// then measures accuracy on the 10,000 test images. It runs on one thread:
// runtime.GOMAXPROCS(1), and the OpenBLAS build pins OpenBLAS to one thread
// itself (internal/model calls openblas_set_num_threads(1); setting
// OPENBLAS_NUM_THREADS=1 as well also stops OpenBLAS starting idle threads).
//
// Output: one JSON object per configuration on stdout, one per line, after
// all repeats have run:
//
//	{"impl":"fedgather","build":"gonum","model":"2nn","batch":10,
//	 "samples_per_s_median":40000,"samples_per_s_min":39000,"samples_per_s_max":41000,
//	 "accuracy":0.9591,"repeats":3,"lr":0.1,"epochs":1,"threads":1,
//	 "train_samples":60000,"test_samples":10000,"samples_per_cpu_s_median":41000}
//
// Fields (keep them stable: the bench command that writes
// docs/PERFORMANCE.md parses them, and bench/pytorch_train.py prints the
// same ones):
//
//	impl                  "fedgather" here, "pytorch" for the anchor
//	build                 the build: "gonum" (default), "purego" or "openblas"
//	                      (PyTorch: "torch-" and its version)
//	model                 "logreg" (784-10) or "2nn" (784-200-200-10)
//	batch                 minibatch size B
//	samples_per_s_*       training examples per second of wall-clock time over
//	                      one epoch: median, min and max over the repeats. Only
//	                      the training call is timed, not loading, model
//	                      initialisation or evaluation.
//	accuracy              test accuracy after the epoch, in [0, 1] (median over
//	                      the repeats; with a fixed seed they are identical)
//	repeats               how many epochs were timed
//	lr, epochs, threads, train_samples, test_samples
//	                      the settings, for the record
//	samples_per_cpu_s_median
//	                      like samples_per_s_median but per second of CPU time
//	                      used by the process, which a busy shared machine
//	                      disturbs less than wall-clock time
//
// Repeats run round-robin over the configurations (repeat 1 of each, then
// repeat 2, ...) after one short untimed warm-up per configuration, so a
// slow spell on a shared machine spreads over all of them.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"fedgather/bench/internal/benchfmt"
	"fedgather/internal/data"
	"fedgather/internal/model"
)

type config struct {
	name  string
	batch int
	spec  model.Spec
	ws    *model.Workspace
	rates []float64 // wall-clock samples/s per repeat
	cpu   []float64 // CPU-time samples/s per repeat
	accs  []float64
}

func main() {
	dir := flag.String("data", "datasets/mnist", "directory holding the MNIST IDX .gz files")
	models := flag.String("models", "logreg,2nn", "comma-separated models to train")
	batches := flag.String("batches", "10,128", "comma-separated batch sizes")
	repeats := flag.Int("repeats", 3, "timed epochs per configuration")
	lr := flag.Float64("lr", 0.1, "SGD learning rate")
	seed := flag.Uint64("seed", 1, "seed for initialisation and shuffling")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the timed epochs to this file")
	flag.Parse()
	log.SetFlags(0)
	if *repeats < 1 {
		log.Fatalf("train: -repeats must be at least 1, got %d", *repeats)
	}
	runtime.GOMAXPROCS(1)

	train, test, err := data.LoadMNIST(*dir)
	if err != nil {
		log.Fatalf("train: %v", err)
	}
	var configs []*config
	for _, name := range strings.Split(*models, ",") {
		spec, err := model.Parse(name, train.Dim, train.Classes)
		if err != nil {
			log.Fatalf("train: %v", err)
		}
		for _, b := range strings.Split(*batches, ",") {
			batch, err := strconv.Atoi(b)
			if err != nil || batch < 1 {
				log.Fatalf("train: batch size %q is not a positive integer", b)
			}
			configs = append(configs, &config{name: name, batch: batch, spec: spec, ws: model.NewWorkspace(spec, 1000)})
		}
	}

	// Warm-up: grow every workspace buffer and fault in the code and data.
	for _, c := range configs {
		params := make([]float32, c.spec.NumParams())
		c.spec.Init(params, *seed)
		c.ws.SGD(params, head(train, 200*c.batch), 1, c.batch, float32(*lr), *seed)
	}

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatalf("train: %v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatalf("train: %v", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				log.Fatalf("train: %v", err)
			}
		}()
	}
	n := float64(train.Len())
	for range *repeats {
		for _, c := range configs {
			params := make([]float32, c.spec.NumParams())
			c.spec.Init(params, *seed)
			runtime.GC() // start each epoch with a clean heap; training itself allocates nothing
			cpu0 := cpuTime()
			start := time.Now()
			c.ws.SGD(params, train, 1, c.batch, float32(*lr), *seed)
			wall := time.Since(start)
			cpu := cpuTime() - cpu0
			c.rates = append(c.rates, n/wall.Seconds())
			if cpu > 0 {
				c.cpu = append(c.cpu, n/cpu.Seconds())
			}
			acc, _ := c.ws.Evaluate(params, test)
			c.accs = append(c.accs, acc)
		}
	}

	enc := json.NewEncoder(os.Stdout)
	for _, c := range configs {
		r := benchfmt.TrainResult{
			Impl:         "fedgather",
			Build:        buildName,
			Model:        c.name,
			Batch:        c.batch,
			Median:       round(benchfmt.Median(c.rates), 1),
			Min:          round(slices.Min(c.rates), 1),
			Max:          round(slices.Max(c.rates), 1),
			Accuracy:     round(benchfmt.Median(c.accs), 4),
			Repeats:      *repeats,
			LR:           *lr,
			Epochs:       1,
			Threads:      1,
			TrainSamples: train.Len(),
			TestSamples:  test.Len(),
			CPUMedian:    round(benchfmt.Median(c.cpu), 1),
		}
		if err := enc.Encode(r); err != nil {
			log.Fatalf("train: %v", err)
		}
	}
}

// head returns the first n examples of ds, sharing its memory.
func head(ds *data.Dataset, n int) *data.Dataset {
	n = min(n, ds.Len())
	return &data.Dataset{X: ds.X[:n*ds.Dim], Y: ds.Y[:n], Dim: ds.Dim, Classes: ds.Classes}
}

func round(v float64, digits int) float64 {
	p, err := strconv.ParseFloat(fmt.Sprintf("%.*f", digits, v), 64)
	if err != nil {
		return v
	}
	return p
}
