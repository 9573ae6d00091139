package data

import (
	"fmt"
	"math"
	"runtime/debug"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// budgetAllocator is the Arrow allocator LoadTable reads through. A
// malformed or crafted Arrow or Parquet file can declare buffer sizes far
// beyond its own length (a compressed buffer states its uncompressed length,
// and the readers allocate it before decompressing). The Go runtime cannot
// recover from the failed allocation that follows, so the allocator refuses
// first: it panics with *overBudget, which LoadTable's recover turns into an
// error naming the file.
//
// The budget is the memory the process could ever have (see memoryBudget),
// so no file that could load is refused. The count of bytes held is kept
// from the sizes Arrow allocates and frees; Arrow's Go allocator leaves
// freeing to the garbage collector, so the count can only be high, never low.
type budgetAllocator struct {
	mem   memory.Allocator
	limit int64
	held  atomic.Int64
}

// overBudget is the panic value of a refused allocation.
type overBudget struct {
	want, held, limit int64
}

func (e *overBudget) Error() string {
	return fmt.Sprintf("the file is malformed: its metadata asks for a %d-byte buffer, with %d bytes already held, more than the %d bytes of memory this process can have",
		e.want, e.held, e.limit)
}

func newBudgetAllocator(limit int64) *budgetAllocator {
	return &budgetAllocator{mem: memory.NewGoAllocator(), limit: limit}
}

// reserve counts delta more bytes as held, or panics if that passes the limit.
func (a *budgetAllocator) reserve(want, delta int64) {
	held := a.held.Add(delta)
	if delta > 0 && (held > a.limit || held < 0) {
		a.held.Add(-delta)
		panic(&overBudget{want: want, held: held - delta, limit: a.limit})
	}
}

func (a *budgetAllocator) Allocate(size int) []byte {
	a.reserve(int64(size), int64(size))
	return a.mem.Allocate(size)
}

func (a *budgetAllocator) Reallocate(size int, b []byte) []byte {
	a.reserve(int64(size), int64(size)-int64(len(b)))
	return a.mem.Reallocate(size, b)
}

func (a *budgetAllocator) Free(b []byte) {
	a.held.Add(-int64(len(b)))
	a.mem.Free(b)
}

// memoryBudget is the most memory this process could have: the machine's
// physical memory, or the Go runtime's soft limit (GOMEMLIMIT) if lower.
// Tests lower it.
var memoryBudget = func() int64 {
	limit := debug.SetMemoryLimit(-1) // math.MaxInt64 unless set
	if phys := physicalMemory(); phys > 0 && phys < limit {
		limit = phys
	}
	if limit <= 0 || limit == math.MaxInt64 {
		limit = 1 << 40 // memory unknown: still refuses the terabytes a crafted file can claim
	}
	return limit
}
