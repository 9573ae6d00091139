package data

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/bitutil"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Shard stream layout.
const (
	// ShardLabelColumn is the name of the int32 label column of an encoded shard.
	ShardLabelColumn = "label"
	// ShardFeaturesColumn is the name of the fixed_size_list<float32>[Dim]
	// features column of an encoded shard.
	ShardFeaturesColumn = "features"
	// ShardClassesKey is the schema metadata key holding Classes in decimal.
	ShardClassesKey = "classes"

	// shardBatchBytes bounds the uncompressed feature bytes per record batch,
	// so that neither side holds one huge buffer for a large shard.
	shardBatchBytes = 16 << 20
)

// shardSchema returns the schema of an encoded shard.
func shardSchema(dim, classes int) *arrow.Schema {
	md := arrow.NewMetadata([]string{ShardClassesKey}, []string{strconv.Itoa(classes)})
	return arrow.NewSchema([]arrow.Field{
		{Name: ShardLabelColumn, Type: arrow.PrimitiveTypes.Int32},
		{Name: ShardFeaturesColumn, Type: arrow.FixedSizeListOfNonNullable(int32(dim), arrow.PrimitiveTypes.Float32)},
	}, &md)
}

// EncodeShard validates d and encodes it as an Arrow IPC stream with schema
// {label: int32, features: fixed_size_list<float32>[Dim]}, schema metadata
// "classes" = Classes in decimal, and ZSTD body compression. Rows are split
// into record batches of at most 16 MiB of uncompressed features; a shard of
// a few thousand MNIST rows is one batch. The stream ends with the IPC
// end-of-stream marker. The encoding does not copy d's slices before
// compressing them.
func EncodeShard(d *Dataset) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("encode shard: %w", err)
	}
	return encodeShard(d, max(1, shardBatchBytes/(4*d.Dim)))
}

// encodeShard encodes a validated dataset in record batches of at most step
// rows.
func encodeShard(d *Dataset, step int) ([]byte, error) {
	if d.Dim > math.MaxInt32 {
		return nil, fmt.Errorf("encode shard: expected Dim ≤ %d, got %d", math.MaxInt32, d.Dim)
	}
	schema := shardSchema(d.Dim, d.Classes)
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema), ipc.WithZstd(), ipc.WithAllocator(memory.DefaultAllocator))
	n := d.Len()
	for lo := 0; ; lo += step { // an empty dataset still gets one empty batch
		hi := min(lo+step, n)
		rec := shardRecord(schema, d, lo, hi)
		err := w.Write(rec)
		rec.Release()
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("encode shard: writing rows %d..%d: %w", lo, hi, err)
		}
		if hi >= n {
			break
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encode shard: closing stream: %w", err)
	}
	return buf.Bytes(), nil
}

// shardRecord wraps rows [lo, hi) of d in a record batch without copying.
func shardRecord(schema *arrow.Schema, d *Dataset, lo, hi int) arrow.RecordBatch {
	rows := hi - lo
	labels := array.NewData(arrow.PrimitiveTypes.Int32, rows,
		[]*memory.Buffer{nil, memory.NewBufferBytes(arrow.Int32Traits.CastToBytes(d.Y[lo:hi]))}, nil, 0, 0)
	defer labels.Release()
	values := array.NewData(arrow.PrimitiveTypes.Float32, rows*d.Dim,
		[]*memory.Buffer{nil, memory.NewBufferBytes(arrow.Float32Traits.CastToBytes(d.X[lo*d.Dim : hi*d.Dim]))}, nil, 0, 0)
	defer values.Release()
	lists := array.NewData(schema.Field(1).Type, rows, []*memory.Buffer{nil}, []arrow.ArrayData{values}, 0, 0)
	defer lists.Release()

	labelArr := array.MakeFromData(labels)
	defer labelArr.Release()
	listArr := array.MakeFromData(lists)
	defer listArr.Release()
	return array.NewRecordBatch(schema, []arrow.Array{labelArr, listArr}, int64(rows))
}

// DecodeShard decodes a shard encoded by EncodeShard, checking it strictly
// against what the caller expects: exactly the columns label: int32 and
// features: fixed_size_list<float32>[dim], schema metadata "classes" equal to
// classes, no nulls, at most maxRows rows in total over any number of record
// batches, labels in [0, classes), finite features, and the stream closed by
// the end-of-stream marker with nothing after it (so a stream cut at a
// message boundary is not mistaken for a shorter shard). Any violation, and
// any malformed input, is an error saying what was expected and what was seen.
//
// Before the Arrow reader sees b, the stream's framing and FlatBuffers
// metadata are verified (see scanShardStream), so that claimed sizes cannot
// make the reader allocate without bound or recurse without end, and the row
// limit is enforced before any body is decompressed. Buffers the Arrow reader
// allocates, decompressed ones included, must then fit in about
// 2·len(b) + maxRows·(dim+1)·4 bytes. A recover turns any panic that still
// escapes the Arrow reader into an error.
func DecodeShard(b []byte, dim, classes int, maxRows int) (d *Dataset, err error) {
	if dim <= 0 || dim > math.MaxInt32 {
		return nil, fmt.Errorf("decode shard: expected dim in [1, %d], got %d", math.MaxInt32, dim)
	}
	if classes <= 0 || classes > math.MaxInt32 {
		return nil, fmt.Errorf("decode shard: expected classes in [1, %d], got %d", math.MaxInt32, classes)
	}
	if maxRows < 0 {
		return nil, fmt.Errorf("decode shard: expected maxRows ≥ 0, got %d", maxRows)
	}
	budget := shardDecodeBudget(len(b), dim, maxRows)
	info, err := scanShardStream(b, maxRows, budget)
	if err != nil {
		return nil, fmt.Errorf("decode shard: %w", err)
	}
	// Last line of defence: the scan above and the Arrow reader's own
	// recovery should turn all bad input into errors.
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("decode shard: malformed Arrow IPC stream (%v)", r)
		}
	}()

	alloc := &budgetAllocator{limit: budget}
	src := bytes.NewReader(b)
	limit := int64(max(len(b), 1))
	rdr, err := ipc.NewReader(src, ipc.WithAllocator(alloc),
		ipc.WithMetadataSizeLimit(limit), ipc.WithBodySizeLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("decode shard: reading the schema message: %w", err)
	}
	defer rdr.Release()

	cols, err := checkShardSchema(rdr.Schema(), dim, classes)
	if err != nil {
		return nil, fmt.Errorf("decode shard: %w", err)
	}
	// Rows are claimed by the metadata, not yet backed by data: grow the
	// output per decoded batch rather than reserving for the claim.
	rows := int(info.rows) // ≤ maxRows
	out := &Dataset{X: []float32{}, Y: []int32{}, Dim: dim, Classes: classes}
	for batch := 0; rdr.Next(); batch++ {
		if err := appendShardBatch(out, rdr.RecordBatch(), cols, maxRows); err != nil {
			return nil, fmt.Errorf("decode shard: record batch %d: %w", batch, err)
		}
	}
	if err := rdr.Err(); err != nil {
		return nil, fmt.Errorf("decode shard: after %d rows: %w", out.Len(), err)
	}
	if out.Len() != rows {
		return nil, fmt.Errorf("decode shard: expected %d rows in %d record batches, decoded %d", rows, info.batches, out.Len())
	}
	return out, nil
}

// shardCols holds the positions of the shard columns in a checked schema.
type shardCols struct{ label, features int }

// checkShardSchema checks that s is exactly the shard schema for dim and
// classes, and returns where its columns are.
func checkShardSchema(s *arrow.Schema, dim, classes int) (shardCols, error) {
	var cols shardCols
	if s == nil {
		return cols, fmt.Errorf("expected a schema, got none")
	}
	names := make([]string, s.NumFields())
	for i, f := range s.Fields() {
		names[i] = fmt.Sprintf("%s: %s", f.Name, f.Type)
	}
	want := fmt.Sprintf("{%s: int32, %s: fixed_size_list<float32>[%d]}", ShardLabelColumn, ShardFeaturesColumn, dim)
	if s.NumFields() != 2 {
		return cols, fmt.Errorf("expected schema %s, got %d columns %v", want, s.NumFields(), names)
	}
	li := s.FieldIndices(ShardLabelColumn)
	fi := s.FieldIndices(ShardFeaturesColumn)
	if len(li) != 1 || len(fi) != 1 {
		return cols, fmt.Errorf("expected schema %s, got columns %v", want, names)
	}
	cols = shardCols{label: li[0], features: fi[0]}

	if t := s.Field(cols.label).Type; t.ID() != arrow.INT32 {
		return cols, fmt.Errorf("column %q: expected type int32, got %s", ShardLabelColumn, t)
	}
	ft := s.Field(cols.features).Type
	fsl, ok := ft.(*arrow.FixedSizeListType)
	if !ok {
		return cols, fmt.Errorf("column %q: expected type fixed_size_list<float32>[%d], got %s", ShardFeaturesColumn, dim, ft)
	}
	if fsl.Elem().ID() != arrow.FLOAT32 {
		return cols, fmt.Errorf("column %q: expected float32 list elements, got %s", ShardFeaturesColumn, fsl.Elem())
	}
	if int(fsl.Len()) != dim {
		return cols, fmt.Errorf("column %q: expected list size %d (the model's input dimension), got %d", ShardFeaturesColumn, dim, fsl.Len())
	}

	md := s.Metadata()
	at := md.FindKey(ShardClassesKey)
	if at < 0 {
		return cols, fmt.Errorf("expected schema metadata %q = %d, got no such key (keys %v)", ShardClassesKey, classes, md.Keys())
	}
	if got := md.Values()[at]; got != strconv.Itoa(classes) {
		return cols, fmt.Errorf("expected schema metadata %q = %d, got %q", ShardClassesKey, classes, got)
	}
	return cols, nil
}

// appendShardBatch checks one record batch and appends its rows to out.
func appendShardBatch(out *Dataset, rec arrow.RecordBatch, cols shardCols, maxRows int) error {
	rows64 := rec.NumRows()
	if rows64 < 0 || rows64 > int64(maxRows-out.Len()) {
		return fmt.Errorf("expected at most %d rows in the shard, got %d after %d earlier rows", maxRows, rows64, out.Len())
	}
	rows, dim := int(rows64), out.Dim

	labels, ok := rec.Column(cols.label).(*array.Int32)
	if !ok {
		return fmt.Errorf("column %q: expected an int32 array, got %T", ShardLabelColumn, rec.Column(cols.label))
	}
	if n, err := nullCount(labels); err != nil || n != 0 {
		return fmt.Errorf("column %q: expected no nulls, got %d (%v)", ShardLabelColumn, n, err)
	}
	ys := labels.Int32Values()
	if labels.Len() != rows || len(ys) != rows {
		return fmt.Errorf("column %q: expected %d values, got %d", ShardLabelColumn, rows, len(ys))
	}

	lists, ok := rec.Column(cols.features).(*array.FixedSizeList)
	if !ok {
		return fmt.Errorf("column %q: expected a fixed-size list array, got %T", ShardFeaturesColumn, rec.Column(cols.features))
	}
	if n, err := nullCount(lists); err != nil || n != 0 {
		return fmt.Errorf("column %q: expected no null rows, got %d (%v)", ShardFeaturesColumn, n, err)
	}
	values, ok := lists.ListValues().(*array.Float32)
	if !ok {
		return fmt.Errorf("column %q: expected float32 list values, got %T", ShardFeaturesColumn, lists.ListValues())
	}
	if n, err := nullCount(values); err != nil || n != 0 {
		return fmt.Errorf("column %q: expected no null features, got %d (%v)", ShardFeaturesColumn, n, err)
	}
	xs := values.Float32Values()
	start := lists.Offset() * dim
	if lists.Len() != rows || start < 0 || len(xs)-start < rows*dim {
		return fmt.Errorf("column %q: expected %d×%d feature values, got %d", ShardFeaturesColumn, rows, dim, len(xs)-start)
	}
	xs = xs[start : start+rows*dim]

	for i, y := range ys {
		if y < 0 || int(y) >= out.Classes {
			return fmt.Errorf("row %d: expected a label in [0, %d), got %d", i, out.Classes, y)
		}
	}
	if err := checkFeatures(xs, dim); err != nil {
		return err
	}
	out.Y = append(out.Y, ys...)
	out.X = append(out.X, xs...)
	return nil
}

// nullCount counts the nulls of arr from its validity bitmap. Unlike
// arr.NullN, it checks that the bitmap covers the array before reading it:
// a stream may declare a null count with a bitmap too short for the array.
func nullCount(arr arrow.Array) (int, error) {
	data := arr.Data()
	bufs := data.Buffers()
	if len(bufs) == 0 || bufs[0] == nil || bufs[0].Len() == 0 {
		return 0, nil // the IPC reader omits the bitmap when the null count is 0
	}
	bits := bufs[0].Bytes()
	off, n := data.Offset(), data.Len()
	if off < 0 || n < 0 || int64(len(bits))*8 < int64(off)+int64(n) {
		return 0, fmt.Errorf("validity bitmap of %d bytes is too short for %d values at offset %d", len(bits), n, off)
	}
	return n - bitutil.CountSetBits(bits, off, n), nil
}

// shardDecodeBudget is the most the Arrow reader may allocate while decoding
// a len-byte stream of at most maxRows rows of dim features: the message
// bodies (at most len bytes together), the decompressed label and feature
// buffers, and slack for 64-byte rounding. It saturates at math.MaxInt.
func shardDecodeBudget(n, dim, maxRows int) int64 {
	const slack = 1 << 20
	rowBytes := (float64(dim) + 1) * 4
	total := 2*float64(n) + float64(maxRows)*rowBytes + slack
	if total >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int64(total)
}

// budgetAllocator is a memory.Allocator that refuses, by panicking with an
// error that the Arrow reader recovers into its own error, to hand out more
// than limit bytes in total. It guards against streams whose headers claim
// huge (decompressed) buffers.
type budgetAllocator struct {
	limit int64
	used  atomic.Int64
}

// errBudget is the panic value of an over-budget allocation.
type errBudget struct{ want, used, limit int64 }

func (e errBudget) Error() string {
	return fmt.Sprintf("stream needs a %d-byte buffer with %d bytes already allocated, over the %d-byte limit for this shard size", e.want, e.used, e.limit)
}

// charge counts n more bytes, panicking if that exceeds the budget.
func (a *budgetAllocator) charge(n int) {
	if n < 0 {
		panic(fmt.Errorf("stream needs a buffer of negative size %d", n))
	}
	used := a.used.Add(int64(n))
	if used > a.limit {
		panic(errBudget{want: int64(n), used: used - int64(n), limit: a.limit})
	}
}

// Allocate implements memory.Allocator.
func (a *budgetAllocator) Allocate(size int) []byte {
	a.charge(size)
	return memory.DefaultAllocator.Allocate(size)
}

// Reallocate implements memory.Allocator; it charges the full new size.
func (a *budgetAllocator) Reallocate(size int, b []byte) []byte {
	a.charge(size)
	return memory.DefaultAllocator.Reallocate(size, b)
}

// Free implements memory.Allocator. Freed bytes are not credited back: the
// budget bounds the total allocated over one decode.
func (a *budgetAllocator) Free(b []byte) { memory.DefaultAllocator.Free(b) }
