// Package benchfmt is what the bench programs share: the line format of a
// training measurement, written by bench/train (and, in Python, by
// bench/pytorch_train.py) and read by the report, and the median they all
// take.
package benchfmt

import "slices"

// TrainResult is one line of a training program's output, one per
// configuration; the field order is the output order. Keep the fields
// stable: bench/pytorch_train.py prints the same ones (see bench/train's
// header comment for their meaning).
type TrainResult struct {
	Impl         string  `json:"impl"`
	Build        string  `json:"build"`
	Model        string  `json:"model"`
	Batch        int     `json:"batch"`
	Median       float64 `json:"samples_per_s_median"`
	Min          float64 `json:"samples_per_s_min"`
	Max          float64 `json:"samples_per_s_max"`
	Accuracy     float64 `json:"accuracy"`
	Repeats      int     `json:"repeats"`
	LR           float64 `json:"lr"`
	Epochs       int     `json:"epochs"`
	Threads      int     `json:"threads"`
	TrainSamples int     `json:"train_samples"`
	TestSamples  int     `json:"test_samples"`
	CPUMedian    float64 `json:"samples_per_cpu_s_median"`
}

// Median returns the median of v (the mean of the middle two for an even
// count), or 0 for an empty v.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
