// Package allreduce folds trainers' updates into the next model version.
//
// The Accumulator is a streaming weighted sum: each update is validated and
// added as it arrives, so gathering needs one model-sized buffer whatever the
// number of updates in a round. The sum is kept in 64-bit fixed point, where
// addition is exact and associative; the mean therefore does not depend on
// the order in which updates arrive nor on how clients were spread over
// trainers, which makes a seeded run bit-reproducible.
package allreduce

import (
	"fmt"
	"math"
)

// MaxAbs is the largest magnitude accepted for one value of an update. A
// larger value means the client diverged; it is refused so that the
// fixed-point sum cannot overflow.
const MaxAbs = 1 << 14

// Accumulator is a streaming, order-independent weighted sum of updates.
// It is not safe for concurrent use.
type Accumulator struct {
	sum       []int64
	scale     float64 // 2^frac: fixed-point units per unit of weight·value
	maxWeight int64
	weight    int64
	count     int
}

// NewAccumulator returns an accumulator for updates of n values whose
// weights add up to at most maxWeight (the sum of the selected clients'
// sample counts). The fixed-point resolution is chosen from maxWeight so
// that no sum can overflow: with MNIST's 60,000 examples it is 2^-32.
func NewAccumulator(n int, maxWeight int64) (*Accumulator, error) {
	if n <= 0 {
		return nil, fmt.Errorf("accumulator size %d: want at least one value", n)
	}
	if maxWeight <= 0 {
		return nil, fmt.Errorf("accumulator total weight %d: want a positive sample count", maxWeight)
	}
	// |sum| <= MaxAbs·maxWeight·2^frac must stay below 2^62.
	frac := 62 - int(math.Ceil(math.Log2(float64(MaxAbs)*float64(maxWeight))))
	if frac < 8 {
		return nil, fmt.Errorf("accumulator total weight %d is too large for 64-bit fixed point (at most %d)", maxWeight, int64(1)<<(62-8)/MaxAbs)
	}
	return &Accumulator{sum: make([]int64, n), scale: math.Ldexp(1, frac), maxWeight: maxWeight}, nil
}

// Len is the number of values of one update.
func (a *Accumulator) Len() int { return len(a.sum) }

// Count is the number of updates added since the last Reset.
func (a *Accumulator) Count() int { return a.count }

// Weight is the total weight added since the last Reset.
func (a *Accumulator) Weight() int64 { return a.weight }

// Reset empties the accumulator, keeping its buffer.
func (a *Accumulator) Reset() {
	clear(a.sum)
	a.weight, a.count = 0, 0
}

// Validate checks an update against the accumulator without adding it:
// length, weight and finite, bounded values. Add performs the same checks.
func (a *Accumulator) Validate(update []float32, weight int64) error {
	if len(update) != len(a.sum) {
		return fmt.Errorf("update has %d values, the model has %d", len(update), len(a.sum))
	}
	if weight <= 0 {
		return fmt.Errorf("update weight %d: want a positive sample count", weight)
	}
	if a.weight+weight > a.maxWeight {
		return fmt.Errorf("update weight %d brings the round's total to %d, above the %d announced", weight, a.weight+weight, a.maxWeight)
	}
	return CheckFinite(update)
}

// CheckFinite reports the first value of u that is NaN, infinite or larger in
// magnitude than MaxAbs.
func CheckFinite(u []float32) error {
	for i, x := range u {
		if !(x >= -MaxAbs && x <= MaxAbs) { // false for NaN too
			return fmt.Errorf("update value %d is %v; want finite values within ±%d", i, x, MaxAbs)
		}
	}
	return nil
}

// Add validates update and folds weight·update into the sum. An update that
// fails validation leaves the accumulator unchanged.
func (a *Accumulator) Add(update []float32, weight int64) error {
	if err := a.Validate(update, weight); err != nil {
		return err
	}
	f := float64(weight) * a.scale
	s := a.sum[:len(update)]
	for i, x := range update {
		s[i] += int64(float64(x) * f)
	}
	a.weight += weight
	a.count++
	return nil
}

// Mean writes the weighted mean of the updates added so far into dst.
func (a *Accumulator) Mean(dst []float32) error {
	if len(dst) != len(a.sum) {
		return fmt.Errorf("mean destination has %d values, the accumulator %d", len(dst), len(a.sum))
	}
	if a.weight == 0 {
		return fmt.Errorf("mean of an empty accumulator: no update was added")
	}
	inv := 1 / (a.scale * float64(a.weight))
	for i, s := range a.sum {
		dst[i] = float32(float64(s) * inv)
	}
	return nil
}

// Bytes is the memory the accumulator holds for its sum.
func (a *Accumulator) Bytes() int { return 8 * len(a.sum) }
