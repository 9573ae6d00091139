package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/endian"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/klauspost/compress/zstd"
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
// end-of-stream marker. The same dataset always encodes to the same bytes.
func EncodeShard(d *Dataset) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("encode shard: %w", err)
	}
	return encodeShard(d, max(1, shardBatchBytes/(4*d.Dim)))
}

// encodeShard encodes a validated dataset in record batches of at most step
// rows. Arrow's writer writes the schema message; the record batches are
// written here, each buffer compressed with a reused ZSTD encoder into one
// frame that states its size. (Arrow's writer makes a new encoder, and
// about eleven times the shard's size in garbage, for every shard; its
// frames do not state their size.)
func encodeShard(d *Dataset, step int) ([]byte, error) {
	if d.Dim > math.MaxInt32 {
		return nil, fmt.Errorf("encode shard: expected Dim ≤ %d, got %d", math.MaxInt32, d.Dim)
	}
	var schema bytes.Buffer
	w := ipc.NewWriter(&schema, ipc.WithSchema(shardSchema(d.Dim, d.Classes)))
	if err := w.Close(); err != nil { // the schema message and the end-of-stream marker
		return nil, fmt.Errorf("encode shard: writing the schema: %w", err)
	}
	out, found := bytes.CutSuffix(schema.Bytes(), ipcEndOfStream)
	if !found {
		return nil, fmt.Errorf("encode shard: Arrow's writer did not end the schema-only stream with the end-of-stream marker")
	}
	out = slices.Clip(out) // appending must not overwrite the marker
	enc := zstdEncoders.Get().(*shardEncoder)
	defer zstdEncoders.Put(enc)
	n := d.Len()
	for lo := 0; ; lo += step { // an empty dataset still gets one empty batch
		hi := min(lo+step, n)
		out = enc.appendBatch(out, d, lo, hi)
		if hi >= n {
			break
		}
	}
	return append(out, ipcEndOfStream...), nil
}

// ipcEndOfStream is the Arrow IPC stream's end-of-stream marker.
var ipcEndOfStream = []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}

// shardEncoder writes record batch messages of the shard schema.
type shardEncoder struct {
	zstd *zstd.Encoder
	fb   *flatbuffers.Builder
	body []byte
}

// zstdEncoders holds *shardEncoder for reuse.
var zstdEncoders = sync.Pool{New: func() any {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // only for invalid options
	}
	return &shardEncoder{zstd: e, fb: flatbuffers.NewBuilder(512)}
}}

// Arrow IPC format constants (Message.fbs).
const (
	fbMetadataV5 = 4 // MetadataVersion.V5
	ipcBodyAlign = 8 // buffers start at multiples of this in a body
)

// appendBatch appends to out the record batch message of rows [lo, hi) of
// d: its metadata and its body, the label and feature buffers compressed.
func (e *shardEncoder) appendBatch(out []byte, d *Dataset, lo, hi int) []byte {
	rows := hi - lo
	// Buffers in schema order, depth first, as the reader expects them:
	// label validity and values, features validity, its elements'
	// validity and values. No column has nulls: no bitmaps.
	e.body = e.body[:0]
	var bufs [5][2]int64
	for i, src := range [5][]byte{nil, e.littleEndian(int32Bytes(d.Y[lo:hi])), nil, nil, nil} {
		if i == 4 {
			src = e.littleEndian(float32Bytes(d.X[lo*d.Dim : hi*d.Dim]))
		}
		off := len(e.body)
		if src != nil {
			e.body = binary.LittleEndian.AppendUint64(e.body, uint64(len(src)))
			e.body = e.zstd.EncodeAll(src, e.body)
		}
		bufs[i] = [2]int64{int64(off), int64(len(e.body) - off)}
		for len(e.body)%ipcBodyAlign != 0 {
			e.body = append(e.body, 0)
		}
	}
	nodes := [3][2]int64{{int64(rows), 0}, {int64(rows), 0}, {int64(rows * d.Dim), 0}}
	meta := e.batchMetadata(rows, nodes[:], bufs[:], len(e.body))

	// Framing: the continuation marker, the padded metadata length, the
	// metadata, padding to 8 bytes, the body.
	padded := (len(meta) + 8 + ipcBodyAlign - 1) / ipcBodyAlign * ipcBodyAlign
	out = binary.LittleEndian.AppendUint32(out, ipcContinuation)
	out = binary.LittleEndian.AppendUint32(out, uint32(padded-8))
	out = append(out, meta...)
	out = append(out, make([]byte, padded-8-len(meta))...)
	return append(out, e.body...)
}

// littleEndian returns b, or on a big-endian machine a copy of it with
// each 4-byte value's bytes reversed, as the stream stores them.
func (e *shardEncoder) littleEndian(b []byte) []byte {
	if !endian.IsBigEndian {
		return b
	}
	c := slices.Clone(b)
	swap32(c)
	return c
}

// batchMetadata builds the FlatBuffers Message of a record batch with ZSTD
// buffer compression.
func (e *shardEncoder) batchMetadata(rows int, nodes, bufs [][2]int64, bodyLen int) []byte {
	b := e.fb
	b.Reset()
	b.StartObject(2) // BodyCompression
	b.PrependByteSlot(0, fbCompressionZSTD, 0)
	comp := b.EndObject()
	structs := func(v [][2]int64) flatbuffers.UOffsetT { // FieldNode or Buffer vector
		b.StartVector(16, len(v), 8)
		for i := len(v) - 1; i >= 0; i-- {
			b.Prep(8, 16)
			b.PrependInt64(v[i][1])
			b.PrependInt64(v[i][0])
		}
		return b.EndVector(len(v))
	}
	nodeVec := structs(nodes)
	bufVec := structs(bufs)
	b.StartObject(5) // RecordBatch
	b.PrependInt64Slot(0, int64(rows), 0)
	b.PrependUOffsetTSlot(1, nodeVec, 0)
	b.PrependUOffsetTSlot(2, bufVec, 0)
	b.PrependUOffsetTSlot(3, comp, 0)
	rb := b.EndObject()
	b.StartObject(5) // Message
	b.PrependInt16Slot(0, fbMetadataV5, 0)
	b.PrependByteSlot(1, fbHeaderRecordBatch, 0)
	b.PrependUOffsetTSlot(2, rb, 0)
	b.PrependInt64Slot(3, int64(bodyLen), 0)
	b.Finish(b.EndObject())
	return b.FinishedBytes()
}

// DecodeShard decodes a shard encoded by EncodeShard, checking it strictly
// against what the caller expects: exactly the columns label: int32 and
// features: fixed_size_list<float32>[dim], schema metadata "classes" equal to
// classes, no nulls, at most maxRows rows in total over any number of record
// batches, labels in [0, classes), finite features, and the stream closed by
// the end-of-stream marker with nothing after it (so a stream cut at a
// message boundary is not mistaken for a shorter shard). Any violation, and
// any malformed input, is an error saying what was expected and what was seen.
// The dataset does not share memory with b.
//
// First the stream's framing and FlatBuffers metadata are verified (see
// scanShardStream), so that claimed sizes cannot make the decoder allocate
// without bound or recurse without end, and the row limit is enforced
// before any body is decompressed. Then Arrow's IPC reader reads the schema
// message, which is checked; the record batches' bodies are decoded here
// (decodeShardBatch) into the dataset, whose rows are the only large
// allocation. A recover turns any panic that still escapes into an error.
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
	// Last line of defence: the scan above, the Arrow reader's own recovery
	// and the checks below should turn all bad input into errors.
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("decode shard: malformed Arrow IPC stream (%v)", r)
		}
	}()

	// The Arrow reader reads the schema message only. The record batches
	// are decoded below, each buffer decompressed straight into the
	// dataset with a reused decoder: Arrow's reader makes a new ZSTD
	// decoder for every buffer, which allocates about seven times the
	// shard's size and took half of the decoding time.
	rdr, err := ipc.NewReader(bytes.NewReader(b[:info.schemaEnd]), ipc.WithMetadataSizeLimit(int64(info.schemaEnd)))
	if err != nil {
		return nil, fmt.Errorf("decode shard: reading the schema message: %w", err)
	}
	defer rdr.Release()
	cols, err := checkShardSchema(rdr.Schema(), dim, classes)
	if err != nil {
		return nil, fmt.Errorf("decode shard: %w", err)
	}

	dec := zstdDecoders.Get().(*shardDecoders)
	defer zstdDecoders.Put(dec)
	// Rows are claimed by the metadata, not yet backed by data: grow the
	// output per decoded batch rather than reserving for the claim.
	out := &Dataset{X: []float32{}, Y: []int32{}, Dim: dim, Classes: classes}
	for i := range info.batches {
		if err := decodeShardBatch(out, &info.batches[i], cols, dec); err != nil {
			return nil, fmt.Errorf("decode shard: record batch %d: %w", i, err)
		}
	}
	return out, nil
}

// shardDecoders are the ZSTD decoders of one DecodeShard call. Both decode
// whole buffers on the calling goroutine into memory they are given. sized
// decodes frames that state their content size, which the scan has checked
// against the buffer's: the decoder stops at it. capped decodes frames that
// do not, and writes no further than its output's capacity; that limit
// makes it use slower copies, so sized, which may write up to zstdSlack
// bytes past the end of its output, takes the frames Arrow writes.
type shardDecoders struct{ sized, capped *zstd.Decoder }

// zstdDecoders holds *shardDecoders for reuse.
var zstdDecoders = sync.Pool{New: func() any {
	sized, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		panic(err) // only for invalid options
	}
	capped, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		panic(err)
	}
	return &shardDecoders{sized: sized, capped: capped}
}}

// decodeShardBatch checks one scanned record batch against the shard
// schema (whose columns are at cols) and appends its rows to out,
// decompressing the label and feature buffers into out's new rows. Like
// Arrow's reader, it skips the validity bitmap of a column whose field node
// declares no nulls, and it reads a column's values from the start of its
// buffer.
func decodeShardBatch(out *Dataset, rb *ipcBatch, cols shardCols, dec *shardDecoders) error {
	rows, dim := int(rb.rows), out.Dim // the scan bounds rows by maxRows
	// Field nodes and buffers come in schema order, depth first: label
	// (validity, values), features (validity), its float32 elements
	// (validity, values).
	if len(rb.nodes) != 3 || len(rb.buffers) != 5 {
		return fmt.Errorf("expected 3 field nodes and 5 buffers (the shard schema's), got %d and %d", len(rb.nodes), len(rb.buffers))
	}
	label, list, elems, labelBuf, elemBuf := 0, 1, 2, 1, 4
	if cols.features < cols.label {
		label, list, elems, labelBuf, elemBuf = 2, 0, 1, 4, 2
	}
	switch {
	case rb.nodes[label][1] != 0:
		return fmt.Errorf("column %q: expected no nulls, got %d", ShardLabelColumn, rb.nodes[label][1])
	case rb.nodes[list][1] != 0:
		return fmt.Errorf("column %q: expected no null rows, got %d", ShardFeaturesColumn, rb.nodes[list][1])
	case rb.nodes[elems][1] != 0:
		return fmt.Errorf("column %q: expected no null features, got %d", ShardFeaturesColumn, rb.nodes[elems][1])
	case rb.nodes[label][0] != int64(rows):
		return fmt.Errorf("column %q: expected %d values, got %d", ShardLabelColumn, rows, rb.nodes[label][0])
	case rb.nodes[list][0] != int64(rows):
		return fmt.Errorf("column %q: expected %d rows, got %d", ShardFeaturesColumn, rows, rb.nodes[list][0])
	case rb.nodes[elems][0] < int64(rows)*int64(dim):
		return fmt.Errorf("column %q: expected %d×%d feature values, got %d", ShardFeaturesColumn, rows, dim, rb.nodes[elems][0])
	}

	// zstdSlack more bytes of capacity let the decoder use its fast
	// copies, which may write up to that far past the end.
	n, nx := out.Len(), len(out.X)
	out.Y = slices.Grow(out.Y, rows+zstdSlack/4)[:n+rows]
	out.X = slices.Grow(out.X, rows*dim+zstdSlack/4)[:nx+rows*dim]
	ys, xs := out.Y[n:], out.X[nx:]
	if err := readShardBuffer(int32Bytes(ys), rb, labelBuf, dec); err != nil {
		return fmt.Errorf("column %q: %w", ShardLabelColumn, err)
	}
	if err := readShardBuffer(float32Bytes(xs), rb, elemBuf, dec); err != nil {
		return fmt.Errorf("column %q: %w", ShardFeaturesColumn, err)
	}
	if cols.swap {
		swap32(int32Bytes(ys))
		swap32(float32Bytes(xs))
	}
	for i, y := range ys {
		if y < 0 || int(y) >= out.Classes {
			return fmt.Errorf("row %d: expected a label in [0, %d), got %d", i, out.Classes, y)
		}
	}
	return checkFeatures(xs, dim)
}

// zstdStatesSize reports whether the ZSTD frame header at the start of
// frame (checked by the scan) states the frame's content size.
func zstdStatesSize(frame []byte) bool {
	fhd := frame[4]
	return fhd>>6 != 0 || fhd&0x20 != 0 // a size field, or a single segment
}

// zstdSlack is how far past the end of its output the ZSTD decoder may
// write when it has the room: with it, it copies in 16-byte blocks.
const zstdSlack = 16

// readShardBuffer fills dst with the first len(dst) bytes of buffer j of
// rb, decompressing it if the batch is compressed; the decoder may write
// into dst's capacity beyond that. The scan has checked that the buffer
// lies in the body and that a compressed one is a single bounded ZSTD
// frame.
func readShardBuffer(dst []byte, rb *ipcBatch, j int, dec *shardDecoders) error {
	off, n := rb.buffers[j][0], rb.buffers[j][1]
	src := rb.body[off : off+n]
	if rb.compressed && n > 0 {
		size := int64(binary.LittleEndian.Uint64(src))
		src = src[8:]
		if size != -1 { // -1: stored uncompressed
			if size < int64(len(dst)) {
				return fmt.Errorf("buffer %d: expected at least %d bytes, got %d uncompressed", j, len(dst), size)
			}
			to := dst[:0:min(cap(dst), len(dst)+zstdSlack)]
			if size > int64(len(dst)) {
				to = make([]byte, 0, size+zstdSlack) // bounded by the scan's budget
			}
			d := dec.sized
			if !zstdStatesSize(src) {
				d, to = dec.capped, to[:0:size]
			}
			got, err := d.DecodeAll(src, to)
			if err != nil {
				return fmt.Errorf("buffer %d: ZSTD: %w", j, err)
			}
			if int64(len(got)) != size {
				return fmt.Errorf("buffer %d: expected %d uncompressed bytes, got %d", j, size, len(got))
			}
			if len(dst) > 0 && &got[0] != &dst[0] {
				copy(dst, got)
			}
			return nil
		}
	}
	if len(src) < len(dst) {
		return fmt.Errorf("buffer %d: expected at least %d bytes, got %d", j, len(dst), len(src))
	}
	copy(dst, src)
	return nil
}

// shardCols holds the positions of the shard columns in a checked schema,
// and whether the stream's byte order differs from this machine's.
type shardCols struct {
	label, features int
	swap            bool
}

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

	cols.swap = s.Endianness() != endian.NativeEndian
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

// shardDecodeBudget bounds the uncompressed length any one buffer of a
// len-byte stream of at most maxRows rows of dim features may claim: the
// message bodies (at most len bytes together), the label and feature
// buffers, and slack for padding. It saturates at math.MaxInt64/2.
func shardDecodeBudget(n, dim, maxRows int) int64 {
	const slack = 1 << 20
	rowBytes := (float64(dim) + 1) * 4
	total := 2*float64(n) + float64(maxRows)*rowBytes + slack
	if total >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int64(total)
}
