// Package data loads, validates, partitions and encodes the labelled datasets
// that the aggregator trains on.
//
// It reads MNIST in its original gzip-compressed IDX form, a user's own table
// (Arrow IPC, Parquet or CSV), splits a dataset into K logical client shards
// (IID, the FedAvg paper's pathological two-shards-per-client split, or a
// Dirichlet(α) label skew), and encodes a shard as a ZSTD-compressed Arrow IPC
// stream for the trip to a trainer. Every reader treats its input as untrusted:
// bad input gives an error that says what was expected and what was seen, never
// a panic.
package data

import "fmt"

// Dataset is a dense labelled dataset held in memory.
type Dataset struct {
	X       []float32 // N*Dim features, row-major
	Y       []int32   // N labels in [0, Classes)
	Dim     int
	Classes int
}

// Len returns the number of examples, len(d.Y).
func (d *Dataset) Len() int { return len(d.Y) }

// Row returns the features of example i as a sub-slice of d.X (no copy). The
// returned slice's capacity ends with the row, so appending to it cannot
// overwrite the next row. Like a slice index, it panics if i is out of range.
func (d *Dataset) Row(i int) []float32 {
	lo, hi := i*d.Dim, (i+1)*d.Dim
	return d.X[lo:hi:hi]
}

// Subset returns a new dataset holding copies of the rows idx, in the order
// given, with the same Dim and Classes. An index may repeat. Like a slice
// index, it panics if an index is out of range; partitioners in this package
// only return in-range indices.
func (d *Dataset) Subset(idx []int) *Dataset {
	out := &Dataset{
		X:       make([]float32, len(idx)*d.Dim),
		Y:       make([]int32, len(idx)),
		Dim:     d.Dim,
		Classes: d.Classes,
	}
	for j, i := range idx {
		out.Y[j] = d.Y[i]
		copy(out.X[j*d.Dim:(j+1)*d.Dim], d.Row(i))
	}
	return out
}

// Validate reports the first inconsistency in d: a non-positive Dim or
// Classes, len(X) != len(Y)*Dim, a label outside [0, Classes), or a NaN or
// infinite feature. An empty dataset (no rows) with positive Dim and Classes is
// valid.
func (d *Dataset) Validate() error {
	if d == nil {
		return fmt.Errorf("dataset: expected a dataset, got nil")
	}
	if d.Dim <= 0 {
		return fmt.Errorf("dataset: Dim must be positive, got %d", d.Dim)
	}
	if d.Classes <= 0 {
		return fmt.Errorf("dataset: Classes must be positive, got %d", d.Classes)
	}
	if len(d.X)%d.Dim != 0 || len(d.X)/d.Dim != len(d.Y) {
		return fmt.Errorf("dataset: expected len(X) = len(Y)*Dim = %d*%d, got len(X) = %d",
			len(d.Y), d.Dim, len(d.X))
	}
	for i, y := range d.Y {
		if y < 0 || int(y) >= d.Classes {
			return fmt.Errorf("dataset: row %d: label %d outside [0, %d)", i, y, d.Classes)
		}
	}
	if err := checkFeatures(d.X, d.Dim); err != nil {
		return fmt.Errorf("dataset: %w", err)
	}
	return nil
}

// checkFeatures reports the first value of x, rows of dim features, that
// is NaN or ±Inf.
func checkFeatures(x []float32, dim int) error {
	for j, v := range x {
		if !isFinite32(v) {
			return fmt.Errorf("row %d, feature %d: expected a finite value, got %v", j/dim, j%dim, v)
		}
	}
	return nil
}

// isFinite32 reports whether v is neither NaN nor ±Inf.
func isFinite32(v float32) bool {
	return v-v == 0 // NaN-NaN and Inf-Inf are NaN
}
