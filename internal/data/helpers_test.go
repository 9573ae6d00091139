package data

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// mnistDir is the committed MNIST copy, relative to this package.
const mnistDir = "../../datasets/mnist"

// mnistPair holds the train and test splits of MNIST.
type mnistPair struct{ train, test *Dataset }

// testMNIST loads MNIST once per test binary; callers must not modify it.
var testMNIST = sync.OnceValues(func() (mnistPair, error) {
	train, test, err := LoadMNIST(mnistDir)
	return mnistPair{train, test}, err
})

// mnist returns the shared MNIST splits or fails the test.
func mnist(t testing.TB) (train, test *Dataset) {
	t.Helper()
	p, err := testMNIST()
	if err != nil {
		t.Fatalf("LoadMNIST(%s): %v", mnistDir, err)
	}
	return p.train, p.test
}

// wantErr checks that err is non-nil and contains every one of subs.
func wantErr(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error containing %q, got nil", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

// checkCover checks that parts are disjoint, each sorted, and together cover
// 0..n-1 exactly once.
func checkCover(t *testing.T, parts [][]int, n int) {
	t.Helper()
	seen := make([]bool, n)
	total := 0
	for c, p := range parts {
		for j, i := range p {
			if i < 0 || i >= n {
				t.Fatalf("client %d: index %d outside [0, %d)", c, i, n)
			}
			if seen[i] {
				t.Fatalf("client %d: index %d given to two clients (or twice)", c, i)
			}
			seen[i] = true
			if j > 0 && p[j-1] >= i {
				t.Fatalf("client %d: indices not strictly ascending at position %d", c, j)
			}
		}
		total += len(p)
	}
	if total != n {
		t.Fatalf("parts cover %d indices, expected %d", total, n)
	}
}

// ipcBytes writes recs with schema in the Arrow IPC file format (file), or
// else as a ZSTD-compressed IPC stream, the form shards travel in.
func ipcBytes(t testing.TB, file bool, schema *arrow.Schema, recs ...arrow.RecordBatch) []byte {
	t.Helper()
	opts := []ipc.Option{ipc.WithSchema(schema)}
	if !file {
		opts = append(opts, ipc.WithZstd())
	}
	return ipcWrite(t, file, opts, recs...)
}

// ipcWrite writes recs in the IPC file or stream format with the writer
// options opts.
func ipcWrite(t testing.TB, file bool, opts []ipc.Option, recs ...arrow.RecordBatch) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w interface {
		Write(arrow.RecordBatch) error
		Close() error
	}
	if file {
		fw, err := ipc.NewFileWriter(&buf, opts...)
		if err != nil {
			t.Fatal(err)
		}
		w = fw
	} else {
		w = ipc.NewWriter(&buf, opts...)
	}
	for _, rec := range recs {
		if err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// buildIPC builds one record batch per fill function with schema and
// writes them as ipcBytes does.
func buildIPC(t testing.TB, file bool, schema *arrow.Schema, fills ...func(*array.RecordBuilder)) []byte {
	t.Helper()
	recs := make([]arrow.RecordBatch, len(fills))
	for i, fill := range fills {
		recs[i] = newRecord(t, schema, fill)
	}
	return ipcBytes(t, file, schema, recs...)
}

// newRecord builds a record batch of schema with fill; it is released when
// the test ends.
func newRecord(t testing.TB, schema *arrow.Schema, fill func(*array.RecordBuilder)) arrow.RecordBatch {
	rb := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer rb.Release()
	fill(rb)
	rec := rb.NewRecordBatch()
	t.Cleanup(rec.Release)
	return rec
}
