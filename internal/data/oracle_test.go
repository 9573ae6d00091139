package data

import (
	"bytes"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/bitutil"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// decodeShardArrow is DecodeShard done by Arrow's IPC reader, as DecodeShard
// was before it decoded record batch bodies itself: the same scan first,
// then the reader for the whole stream. The tests hold DecodeShard to it.
func decodeShardArrow(b []byte, dim, classes int, maxRows int) (d *Dataset, err error) {
	info, err := scanShardStream(b, maxRows, shardDecodeBudget(len(b), dim, maxRows))
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("Arrow's reader panicked: %v", r)
		}
	}()
	rdr, err := ipc.NewReader(bytes.NewReader(b), ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		return nil, err
	}
	defer rdr.Release()
	cols, err := checkShardSchema(rdr.Schema(), dim, classes)
	if err != nil {
		return nil, err
	}
	out := &Dataset{X: []float32{}, Y: []int32{}, Dim: dim, Classes: classes}
	for batch := 0; rdr.Next(); batch++ {
		if err := appendShardBatch(out, rdr.RecordBatch(), cols, maxRows); err != nil {
			return nil, fmt.Errorf("record batch %d: %w", batch, err)
		}
	}
	if err := rdr.Err(); err != nil {
		return nil, err
	}
	if out.Len() != int(info.rows) {
		return nil, fmt.Errorf("expected %d rows, decoded %d", info.rows, out.Len())
	}
	return out, nil
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

// shardRecord wraps rows [lo, hi) of d in a record batch without copying,
// for Arrow's own writer.
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
