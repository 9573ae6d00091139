// Package allreduce folds trainers' updates into the next model version.
//
// The Accumulator is a streaming weighted sum: each update is validated and
// added as it arrives, so gathering needs one model-sized buffer whatever the
// number of updates in a round. The sum is kept in 64-bit fixed point, where
// addition is exact and associative; the mean therefore does not depend on
// the order in which updates arrive nor on how clients were spread over
// trainers, which makes a seeded run bit-reproducible. The int64 of each
// value is stored as two 32-bit halves in separate planes, so that a fold
// that does not carry touches only the low half (see kernels.go).
//
// Each value is converted to fixed point as RoundToEven(value·weight·2^frac)
// and added; validation and folding are one pass over the update (see Add).
// On amd64 CPUs with AVX2 an assembly kernel does the arithmetic; it gives
// bit-identical sums to the portable Go kernel (build tag purego forces the
// latter).
package allreduce

import (
	"fmt"
	"math"
	"math/bits"
)

// MaxAbs is the largest magnitude accepted for one value of an update. A
// larger value means the client diverged; it is refused so that the
// fixed-point sum cannot overflow.
const MaxAbs = 1 << 14

// Accumulator is a streaming, order-independent weighted sum of updates.
// It is not safe for concurrent use.
type Accumulator struct {
	// The fixed-point sum of value i is hi[i]·2^32 + lo[i] (kernels.go).
	lo, hi    []int32
	scale     float64 // 2^frac: fixed-point units per unit of weight·value
	maxWeight int64
	weight    int64
	count     int
	// dirty is set once a fold may have left a non-zero sum: Reset clears
	// the planes only then (MeanAndReset leaves them zero).
	dirty bool
}

// MaxTotalWeight is the largest total weight an accumulator accepts
// (see NewAccumulator).
const MaxTotalWeight = 1 << 29

// NewAccumulator returns an accumulator for updates of n values whose
// weights add up to at most maxWeight (the sum of the selected clients'
// sample counts), and at most MaxTotalWeight.
//
// The fixed-point scale 2^frac is the largest power of two for which one
// value's term stays within the exact float64-to-integer conversion:
//
//	frac = 51 − ⌈log2(MaxAbs·maxWeight)⌉, so |x|·w·2^frac ≤ 2^51
//
// for every accepted value |x| ≤ MaxAbs and weight w ≤ maxWeight. Since the
// weights add up to at most maxWeight, the whole sum is bounded by 2^51 too,
// far below int64's 2^63: no sum can overflow (and the high 32-bit half
// of a sum, which the accumulator stores apart from the low one, is at most
// 2^19 in magnitude). Each term is rounded to the
// nearest multiple of 2^-frac, and maxWeight·2^frac ≥ 2^36, so the mean of
// m updates is within m·2^-37 (about m·7e-12) of the exact weighted mean
// before its final rounding to float32. With MNIST's 60,000 examples in one
// round, frac is 21; with a 6,000-example round (the demo), 24.
func NewAccumulator(n int, maxWeight int64) (*Accumulator, error) {
	if n <= 0 {
		return nil, fmt.Errorf("accumulator size %d: want at least one value", n)
	}
	scale, err := scaleFor(maxWeight)
	if err != nil {
		return nil, err
	}
	// One allocation for both planes: lo, skewed, then hi.
	skew := loSkew(n)
	planes := make([]int32, skew+2*n)
	return &Accumulator{lo: planes[skew : skew+n : skew+n], hi: planes[skew+n:], scale: scale, maxWeight: maxWeight}, nil
}

// loSkew returns how many values lo starts after the beginning of the
// accumulator's buffer, for n values. The fold streams the update and lo
// side by side, 4 bytes per value each. Go places large buffers at
// addresses that are often equal modulo 512 KiB or more, and when the
// update's and lo's are, the two streams compete for the same cache sets
// all along: on a 64 MiB update the fold then ran at about 5 GB/s instead
// of 12–14. Starting lo 64 KiB into the buffer avoids it, for 64 KiB of
// memory per accumulator of at least 2^20 values (4 MiB per half). (An int64
// sum, 8 bytes per value, drifted away from the update and had no such
// problem.)
func loSkew(n int) int {
	if n < 1<<20 {
		return 0
	}
	return 16 << 10
}

// scaleFor returns 2^frac for a round whose weights add up to at most
// maxWeight (see NewAccumulator).
func scaleFor(maxWeight int64) (float64, error) {
	if maxWeight <= 0 {
		return 0, fmt.Errorf("accumulator total weight %d: want a positive sample count", maxWeight)
	}
	if maxWeight > MaxTotalWeight {
		return 0, fmt.Errorf("accumulator total weight %d is too large for 64-bit fixed point (at most %d)", maxWeight, MaxTotalWeight)
	}
	// ⌈log2(v)⌉ for v ≥ 1 is the bit length of v−1. MaxAbs·maxWeight ≤ 2^43,
	// so frac ≥ 8.
	frac := 51 - bits.Len64(uint64(MaxAbs*maxWeight-1))
	return math.Ldexp(1, frac), nil
}

// ResetFor empties the accumulator for a new round whose weights add up to
// at most maxWeight, keeping its buffer: it then behaves exactly like
// NewAccumulator(a.Len(), maxWeight), without allocating (and page-faulting
// in) a new sum every round. On error the accumulator is unchanged.
func (a *Accumulator) ResetFor(maxWeight int64) error {
	scale, err := scaleFor(maxWeight)
	if err != nil {
		return err
	}
	a.Reset()
	a.scale, a.maxWeight = scale, maxWeight
	return nil
}

// Len is the number of values of one update.
func (a *Accumulator) Len() int { return len(a.lo) }

// Count is the number of updates added since the last Reset, ResetFor or
// MeanAndReset.
func (a *Accumulator) Count() int { return a.count }

// Weight is the total weight added since the last Reset, ResetFor or
// MeanAndReset.
func (a *Accumulator) Weight() int64 { return a.weight }

// Reset empties the accumulator, keeping its buffer.
func (a *Accumulator) Reset() {
	if a.dirty {
		clear(a.lo)
		clear(a.hi)
		a.dirty = false
	}
	a.weight, a.count = 0, 0
}

// Validate checks an update against the accumulator without adding it:
// length, weight and finite, bounded values. Add performs the same checks.
func (a *Accumulator) Validate(update []float32, weight int64) error {
	if err := a.checkShape(update, weight); err != nil {
		return err
	}
	return CheckFinite(update)
}

func (a *Accumulator) checkShape(update []float32, weight int64) error {
	if len(update) != len(a.lo) {
		return fmt.Errorf("update has %d values, the model has %d", len(update), len(a.lo))
	}
	if weight <= 0 {
		return fmt.Errorf("update weight %d: want a positive sample count", weight)
	}
	if a.weight+weight > a.maxWeight {
		return fmt.Errorf("update weight %d brings the round's total to %d, above the %d announced", weight, a.weight+weight, a.maxWeight)
	}
	return nil
}

// CheckFinite reports the first value of u that is NaN, infinite or larger in
// magnitude than MaxAbs.
func CheckFinite(u []float32) error {
	if inRange(u) {
		return nil
	}
	return badValue(u, 0)
}

// badValue describes the first value of u outside ±MaxAbs, u being the
// update's values from index offset on.
func badValue(u []float32, offset int) error {
	for i, x := range u {
		if !(x >= -MaxAbs && x <= MaxAbs) { // false for NaN too
			return fmt.Errorf("update value %d is %v; want finite values within ±%d", offset+i, x, MaxAbs)
		}
	}
	return nil
}

// foldChunk is how many values Add folds per call of the checked kernel.
// The check is fused into the fold, so the chunk no longer needs to fit in
// L1; it only keeps each assembly call short (an assembly loop cannot be
// preempted, and a 64 MiB update takes milliseconds). It is a multiple of
// checkBlock, so chunks do not split the check's blocks.
const foldChunk = 1 << 14

// Add validates update and folds weight·update into the sum. An update that
// fails validation leaves the accumulator unchanged.
//
// Checking and folding are one pass: the kernel range-checks each block of
// 32 values and folds it only if it is clean (foldCheckedGeneric). When a
// block holds a bad value, the values already folded are subtracted again,
// which restores the sum exactly: fixed-point addition is exact, and the
// rounding of −x·w is the negation of that of x·w. (Both halves of each sum
// are restored bit for bit: they are a function of the sum.)
func (a *Accumulator) Add(update []float32, weight int64) error {
	if err := a.checkShape(update, weight); err != nil {
		return err
	}
	f := float64(weight) * a.scale
	lo, hi := a.lo, a.hi
	a.dirty = true
	for start := 0; start < len(update); start += foldChunk {
		end := min(start+foldChunk, len(update))
		if k := start + foldChecked(lo[start:end], hi[start:end], update[start:end], f); k < end {
			// Everything before k is folded, and clean: the first bad
			// value is at k or after.
			fold(lo[:k], hi[:k], update[:k], -f)
			return badValue(update[k:], k)
		}
	}
	a.weight += weight
	a.count++
	return nil
}

// Mean writes the weighted mean of the updates added so far into dst.
func (a *Accumulator) Mean(dst []float32) error { return a.mean(dst, false) }

// MeanAndReset writes the mean into dst, as Mean does, and empties the
// accumulator, as Reset does, in one pass over the sum: each value is set to
// zero once read, while it is in cache, so that the next Reset or ResetFor
// has nothing left to clear. A round's last use of the accumulator is its
// mean, and a separate clear of the sum (8 bytes a value) took about as long
// as a fold. On error the accumulator is unchanged.
func (a *Accumulator) MeanAndReset(dst []float32) error {
	if err := a.mean(dst, true); err != nil {
		return err
	}
	a.weight, a.count, a.dirty = 0, 0, false
	return nil
}

func (a *Accumulator) mean(dst []float32, zero bool) error {
	if len(dst) != len(a.lo) {
		return fmt.Errorf("mean destination has %d values, the accumulator %d", len(dst), len(a.lo))
	}
	if a.weight == 0 {
		return fmt.Errorf("mean of an empty accumulator: no update was added")
	}
	scaleMean(dst, a.lo, a.hi, 1/(a.scale*float64(a.weight)), zero)
	return nil
}

// Bytes is the memory the accumulator holds for its sum: 8 bytes per value,
// the two 32-bit halves, and loSkew's 64 KiB in a large accumulator.
func (a *Accumulator) Bytes() int { return 4 * (loSkew(len(a.lo)) + len(a.lo) + len(a.hi)) }
