package data

import (
	"fmt"
	"math"
	"runtime/debug"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// budgetIs says what the dataset budget is, for error messages.
const budgetIs = "half the memory this process can have"

// budgetAllocator is the Arrow allocator LoadTable reads through, and the
// account of the memory the loaded dataset itself takes. A malformed or
// crafted Arrow or Parquet file can declare sizes far beyond its own length
// (a compressed buffer states its uncompressed length, and the readers
// allocate it before decompressing). The Go runtime cannot recover from the
// failed allocation that follows, so the budget refuses first: Arrow's
// allocations past it panic with *overBudget, which the readers' and
// LoadTable's recovers turn into errors, and claim refuses the dataset's own
// arrays.
//
// The count is of the bytes Arrow holds, the file's message being read (see
// readerSource) and the dataset's arrays (see grow). Memory released from
// the count may not have been collected yet, so the limit is half the
// memory the process can have (see memoryBudget), leaving the other half
// for such garbage and the rest of the program.
type budgetAllocator struct {
	mem     memory.Allocator
	limit   int64
	held    atomic.Int64
	refused atomic.Pointer[overBudget] // the first allocation refused, for the error
}

// overBudget is the panic value of a refused allocation.
type overBudget struct {
	want, held, limit int64
}

func (e *overBudget) Error() string {
	return fmt.Sprintf("the file asks for %d bytes, with %d bytes already held, more than the %d-byte dataset budget (%s)",
		e.want, e.held, e.limit, budgetIs)
}

func newBudgetAllocator(limit int64) *budgetAllocator {
	return &budgetAllocator{mem: memory.NewGoAllocator(), limit: limit}
}

// claim counts n more bytes as held, or returns *overBudget if that would
// pass the limit.
func (a *budgetAllocator) claim(n int64) error {
	held := a.held.Add(n)
	if n > 0 && (held > a.limit || held < 0) {
		a.held.Add(-n)
		return &overBudget{want: n, held: held - n, limit: a.limit}
	}
	return nil
}

func (a *budgetAllocator) Allocate(size int) []byte {
	a.mustClaim(int64(size))
	return a.mem.Allocate(size)
}

func (a *budgetAllocator) Reallocate(size int, b []byte) []byte {
	a.mustClaim(int64(size) - int64(len(b)))
	return a.mem.Reallocate(size, b)
}

// mustClaim claims n bytes for Arrow or panics, remembering the refusal.
func (a *budgetAllocator) mustClaim(n int64) {
	if err := a.claim(n); err != nil {
		ob := err.(*overBudget)
		a.refused.CompareAndSwap(nil, ob)
		panic(ob)
	}
}

func (a *budgetAllocator) Free(b []byte) {
	a.held.Add(-int64(len(b)))
	a.mem.Free(b)
}

// memoryBudget is the dataset budget: half the least of the machine's
// physical memory, the room left under the process's address-space and
// data limits, its cgroups' memory limits and the Go runtime's soft limit
// (GOMEMLIMIT), as far as each is known (see memoryLimits). Tests lower it.
var memoryBudget = func() int64 {
	limit := debug.SetMemoryLimit(-1) // math.MaxInt64 unless set
	for _, l := range memoryLimits() {
		if l > 0 && l < limit {
			limit = l
		}
	}
	if limit == math.MaxInt64 {
		limit = 2 << 40 // nothing known: still refuses the terabytes a crafted file can claim
	}
	return limit / 2
}
