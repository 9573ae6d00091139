//go:build openblas

package openblas

/*
#cgo LDFLAGS: -lopenblas
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
*/
import "C"

// SetNumThreads sets how many threads OpenBLAS may use for one call.
func SetNumThreads(n int) { C.openblas_set_num_threads(C.int(n)) }

// NumThreads returns how many threads OpenBLAS may use for one call.
func NumThreads() int { return int(C.openblas_get_num_threads()) }
