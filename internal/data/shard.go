package data

import (
	"bytes"
	"encoding/binary"
	"errors"
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

// shardSchema returns the schema of an encoded shard, whose data is
// little-endian on every machine: the same dataset encodes to the same
// bytes everywhere.
func shardSchema(dim, classes int) *arrow.Schema {
	md := arrow.NewMetadata([]string{ShardClassesKey}, []string{strconv.Itoa(classes)})
	return arrow.NewSchemaWithEndian([]arrow.Field{
		{Name: ShardLabelColumn, Type: arrow.PrimitiveTypes.Int32},
		{Name: ShardFeaturesColumn, Type: arrow.FixedSizeListOfNonNullable(int32(dim), arrow.PrimitiveTypes.Float32)},
	}, &md, endian.LittleEndian)
}

// EncodeShard validates d and encodes it as an Arrow IPC stream with schema
// {label: int32, features: fixed_size_list<float32>[Dim]}, schema metadata
// "classes" = Classes in decimal, and ZSTD body compression. Rows are split
// into record batches of at most 16 MiB of uncompressed features; a shard of
// a few thousand MNIST rows is one batch. The stream ends with the IPC
// end-of-stream marker. The same dataset always encodes to the same bytes.
// EncodeShard borrows a ShardEncoder from a pool.
func EncodeShard(d *Dataset) ([]byte, error) {
	enc := shardEncoders.Get().(*ShardEncoder)
	defer shardEncoders.Put(enc)
	return enc.Encode(d)
}

// A ShardEncoder encodes datasets as EncodeShard does, reusing its ZSTD
// encoder (about 17 MB of state) and buffers from one call to the next. It
// is not safe for concurrent use. A caller that encodes many shards and
// then no more, as the aggregator does at start-up, holds its own and
// drops it after, so that its memory goes too.
type ShardEncoder struct {
	zstd *zstd.Encoder
	fb   *flatbuffers.Builder
	body []byte
}

// NewShardEncoder returns a ShardEncoder.
func NewShardEncoder() *ShardEncoder {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // only for invalid options
	}
	return &ShardEncoder{zstd: e, fb: flatbuffers.NewBuilder(512)}
}

// shardEncoders holds *ShardEncoder for EncodeShard.
var shardEncoders = sync.Pool{New: func() any { return NewShardEncoder() }}

// Encode validates d and encodes it; see EncodeShard.
func (e *ShardEncoder) Encode(d *Dataset) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("encode shard: %w", err)
	}
	return e.encode(d, max(1, shardBatchBytes/(4*d.Dim)))
}

// encode encodes a validated dataset in record batches of at most step
// rows. Arrow's writer writes the schema message; the record batches are
// written here, each buffer compressed with the reused ZSTD encoder into
// one frame, which states its size unless the buffer is under 256 bytes.
// (Arrow's writer makes a new encoder, and about eleven times the shard's
// size in garbage, for every shard; its frames do not state their size.)
func (e *ShardEncoder) encode(d *Dataset, step int) ([]byte, error) {
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
	n := d.Len()
	for lo := 0; ; lo += step { // an empty dataset still gets one empty batch
		hi := min(lo+step, n)
		out = e.appendBatch(out, d, lo, hi)
		if hi >= n {
			break
		}
	}
	return append(out, ipcEndOfStream...), nil
}

// ipcEndOfStream is the Arrow IPC stream's end-of-stream marker.
var ipcEndOfStream = []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}

// Arrow IPC format constants (Message.fbs).
const (
	fbMetadataV5 = 4 // MetadataVersion.V5
	ipcBodyAlign = 8 // buffers start at multiples of this in a body
)

// appendBatch appends to out the record batch message of rows [lo, hi) of
// d: its metadata and its body, the label and feature buffers compressed.
func (e *ShardEncoder) appendBatch(out []byte, d *Dataset, lo, hi int) []byte {
	rows := hi - lo
	// Buffers in schema order, depth first, as the reader expects them:
	// label validity and values, features validity, its elements'
	// validity and values. No column has nulls: no bitmaps.
	e.body = e.body[:0]
	var bufs [5][2]int64
	labels, features := e.littleEndian(int32Bytes(d.Y[lo:hi])), e.littleEndian(float32Bytes(d.X[lo*d.Dim:hi*d.Dim]))
	for i, src := range [5][]byte{nil, labels, nil, nil, features} {
		off := len(e.body)
		if len(src) > 0 { // an empty buffer is {offset, 0}, whatever src's capacity
			e.body = binary.LittleEndian.AppendUint64(e.body, uint64(len(src)))
			e.body = e.zstd.EncodeAll(src, e.body)
		}
		bufs[i] = [2]int64{int64(off), int64(len(e.body) - off)}
		for len(e.body)%ipcBodyAlign != 0 {
			e.body = append(e.body, 0)
		}
	}
	nodes := [3][2]int64{{int64(rows), 0}, {int64(rows), 0}, {int64(rows * d.Dim), 0}}
	meta := batchMetadata(e.fb, rows, nodes[:], bufs[:], len(e.body), true)
	return appendMessage(out, meta, e.body)
}

// appendMessage appends an IPC message to out: the continuation marker, the
// metadata's length padded so that the body starts at a multiple of 8, the
// metadata and its padding, the body (a multiple of 8 bytes long).
func appendMessage(out, meta, body []byte) []byte {
	padded := (len(meta) + 8 + ipcBodyAlign - 1) / ipcBodyAlign * ipcBodyAlign
	out = binary.LittleEndian.AppendUint32(out, ipcContinuation)
	out = binary.LittleEndian.AppendUint32(out, uint32(padded-8))
	out = append(out, meta...)
	out = append(out, make([]byte, padded-8-len(meta))...)
	return append(out, body...)
}

// littleEndian returns b, or on a big-endian machine a copy of it with
// each 4-byte value's bytes reversed, as the stream stores them.
func (e *ShardEncoder) littleEndian(b []byte) []byte {
	if !endian.IsBigEndian {
		return b
	}
	c := slices.Clone(b)
	swap32(c)
	return c
}

// batchMetadata builds in b the FlatBuffers Message of a record batch,
// with ZSTD buffer compression if compressed.
func batchMetadata(b *flatbuffers.Builder, rows int, nodes, bufs [][2]int64, bodyLen int, compressed bool) []byte {
	b.Reset()
	var comp flatbuffers.UOffsetT
	if compressed {
		b.StartObject(2) // BodyCompression
		b.PrependByteSlot(0, fbCompressionZSTD, 0)
		comp = b.EndObject()
	}
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
	if compressed {
		b.PrependUOffsetTSlot(3, comp, 0)
	}
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
// scanShardStream), so that nothing in them can make the decoder recurse
// without end, and the row limit is enforced. Then Arrow's IPC reader reads
// the schema message, which is checked, and every record batch's field
// nodes and buffer sizes are checked against its rows (checkShardBatch).
// Only then is the dataset allocated, for the rows claimed (at most
// maxRows), and each buffer decoded into it; that is the only large
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

	// The Arrow reader reads the schema message only, keeping its byte
	// order. The record batches are decoded below, each buffer
	// decompressed straight into the dataset with a reused decoder.
	rdr, err := ipc.NewReader(bytes.NewReader(b[:info.schemaEnd]),
		ipc.WithMetadataSizeLimit(int64(info.schemaEnd)), ipc.WithEnsureNativeEndian(false))
	if err != nil {
		return nil, fmt.Errorf("decode shard: reading the schema message: %w", err)
	}
	defer rdr.Release()
	cols, err := checkShardSchema(rdr.Schema(), dim, classes)
	if err != nil {
		return nil, fmt.Errorf("decode shard: %w", err)
	}

	// Rows are claimed by the metadata. Every batch's field nodes and
	// buffer sizes must agree with its claim before anything is reserved.
	rows := 0
	for i := range info.batches {
		if err := checkShardBatch(&info.batches[i], cols, dim); err != nil {
			return nil, fmt.Errorf("decode shard: record batch %d: %w", i, err)
		}
		rows += int(info.batches[i].rows)
	}
	// zstdSlack more bytes of capacity let the decoder use its fast
	// copies, which may write up to that far past a buffer's end: into
	// the next batch's rows, decoded after it, or into this slack.
	const slack = zstdSlack / 4
	out := &Dataset{X: make([]float32, rows*dim, rows*dim+slack), Y: make([]int32, rows, rows+slack), Dim: dim, Classes: classes}
	dec := zstdDecoders.Get().(*shardDecoders)
	defer zstdDecoders.Put(dec)
	at := 0
	for i := range info.batches {
		rb := &info.batches[i]
		n := int(rb.rows)
		if err := decodeShardBatch(out.Y[at:at+n], out.X[at*dim:(at+n)*dim], rb, cols, dec); err != nil {
			return nil, fmt.Errorf("decode shard: record batch %d: %w", i, err)
		}
		if err := out.checkRows(at, n); err != nil {
			return nil, fmt.Errorf("decode shard: record batch %d: %w", i, err)
		}
		at += n
	}
	return out, nil
}

// shardDecoders are the ZSTD decoders of one DecodeShard call. Both decode
// whole buffers on the calling goroutine into memory they are given. sized
// decodes frames that state their content size, which the scan has checked
// against the buffer's: the decoder stops at it. capped decodes frames that
// do not, and writes no further than its output's capacity; that limit
// makes it use slower copies, so sized, which may write up to zstdSlack
// bytes past the end of its output, takes the frames EncodeShard writes
// (all but those of buffers under 256 bytes).
// A pooled decoder refers to the last dataset it decoded into until it is
// used again or the pool drops it (at the second garbage collection).
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

// shardLayout says where a shard batch's columns are among its field nodes
// and buffers, which come in schema order, depth first: label (validity,
// values), features (validity), its float32 elements (validity, values).
func shardLayout(cols shardCols) (label, list, elems, labelBuf, elemBuf int) {
	if cols.features < cols.label {
		return 2, 0, 1, 4, 2
	}
	return 0, 1, 2, 1, 4
}

// checkShardBatch checks a scanned record batch's field nodes and buffer
// sizes against the shard schema (whose columns are at cols) and its row
// count. Like Arrow's reader, it ignores the validity bitmap of a column
// whose field node declares no nulls, and what the buffers of a batch of
// no rows hold (the scan has checked that they are well-formed frames).
func checkShardBatch(rb *ipcBatch, cols shardCols, dim int) error {
	rows := rb.rows // the scan bounds it by maxRows
	if len(rb.nodes) != 3 || len(rb.buffers) != 5 {
		return fmt.Errorf("expected 3 field nodes and 5 buffers (the shard schema's), got %d and %d", len(rb.nodes), len(rb.buffers))
	}
	label, list, elems, labelBuf, elemBuf := shardLayout(cols)
	switch {
	case rb.nodes[label][1] != 0:
		return fmt.Errorf("column %q: expected no nulls, got %d", ShardLabelColumn, rb.nodes[label][1])
	case rb.nodes[list][1] != 0:
		return fmt.Errorf("column %q: expected no null rows, got %d", ShardFeaturesColumn, rb.nodes[list][1])
	case rb.nodes[elems][1] != 0:
		return fmt.Errorf("column %q: expected no null features, got %d", ShardFeaturesColumn, rb.nodes[elems][1])
	case rb.nodes[label][0] != rows:
		return fmt.Errorf("column %q: expected %d values, got %d", ShardLabelColumn, rows, rb.nodes[label][0])
	case rb.nodes[list][0] != rows:
		return fmt.Errorf("column %q: expected %d rows, got %d", ShardFeaturesColumn, rows, rb.nodes[list][0])
	case rb.nodes[elems][0] != rows*int64(dim):
		return fmt.Errorf("column %q: expected %d×%d feature values, got %d", ShardFeaturesColumn, rows, dim, rb.nodes[elems][0])
	case rows == 0:
		return nil
	}
	if err := checkShardBuffer(rb, labelBuf, 4*rows); err != nil {
		return fmt.Errorf("column %q: %w", ShardLabelColumn, err)
	}
	if err := checkShardBuffer(rb, elemBuf, 4*rows*int64(dim)); err != nil {
		return fmt.Errorf("column %q: %w", ShardFeaturesColumn, err)
	}
	return nil
}

// decodeShardBatch decodes a batch checked by checkShardBatch into ys and
// xs, its rows' labels and features, whose capacity the decoder may write
// into up to zstdSlack bytes past their ends.
func decodeShardBatch(ys []int32, xs []float32, rb *ipcBatch, cols shardCols, dec *shardDecoders) error {
	if len(ys) == 0 {
		return nil
	}
	_, _, _, labelBuf, elemBuf := shardLayout(cols)
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
	return nil
}

// checkRows checks the labels and features of rows [at, at+n).
func (d *Dataset) checkRows(at, n int) error {
	for i, y := range d.Y[at : at+n] {
		if y < 0 || int(y) >= d.Classes {
			return fmt.Errorf("row %d: expected a label in [0, %d), got %d", i, d.Classes, y)
		}
	}
	return checkFeatures(d.X[at*d.Dim:(at+n)*d.Dim], d.Dim)
}

// shardBuffer returns buffer j of rb, as bufferBytes reads it (the scan
// has checked that it lies in the body and has its length prefix).
func shardBuffer(rb *ipcBatch, j int) (src []byte, frame bool, size int64) {
	return bufferBytes(rb.body, rb.compressed, rb.buffers[j][0], rb.buffers[j][1])
}

// checkShardBuffer checks that buffer j of rb holds need bytes: a ZSTD
// frame must be stated to decode to exactly that many, and bytes stored
// as they are may be more (padding).
func checkShardBuffer(rb *ipcBatch, j int, need int64) error {
	_, frame, size := shardBuffer(rb, j)
	switch {
	case frame && size != need:
		return fmt.Errorf("buffer %d: expected %d uncompressed bytes, got %d", j, need, size)
	case !frame && size < need:
		return fmt.Errorf("buffer %d: expected at least %d bytes, got %d", j, need, size)
	}
	return nil
}

// forFrame returns the decoder for frame (checked by the scan): the
// sized one if its header states the content size, else the capped one.
func (dec *shardDecoders) forFrame(frame []byte) *zstd.Decoder {
	fhd := frame[4]
	if fhd>>6 != 0 || fhd&0x20 != 0 { // a size field, or a single segment
		return dec.sized
	}
	return dec.capped
}

// zstdSlack is how far past the end of its output the ZSTD decoder may
// write when it has the room: with it, it copies in 16-byte blocks.
const zstdSlack = 16

// readShardBuffer fills dst with buffer j of rb, which checkShardBuffer
// has checked holds len(dst) > 0 bytes, decompressing it if it is a ZSTD
// frame. The decoder may write into dst's capacity up to zstdSlack bytes
// past its end.
func readShardBuffer(dst []byte, rb *ipcBatch, j int, dec *shardDecoders) error {
	src, frame, _ := shardBuffer(rb, j)
	if !frame {
		copy(dst, src)
		return nil
	}
	d := dec.forFrame(src)
	to := dst[:0:min(cap(dst), len(dst)+zstdSlack)]
	if d == dec.capped {
		to = dst[:0:len(dst)]
	}
	got, err := d.DecodeAll(src, to)
	switch {
	case errors.Is(err, zstd.ErrFrameSizeExceeded):
		return fmt.Errorf("buffer %d: ZSTD frame decodes to more than its header's content size", j)
	case errors.Is(err, zstd.ErrDecoderSizeExceeded) || len(got) > len(dst):
		return fmt.Errorf("buffer %d: ZSTD frame decodes to more than the stated %d bytes", j, len(dst))
	case err != nil:
		return fmt.Errorf("buffer %d: corrupt ZSTD frame (%w)", j, err)
	case len(got) < len(dst):
		return fmt.Errorf("buffer %d: ZSTD frame decodes to %d bytes, %d stated", j, len(got), len(dst))
	}
	if &got[0] != &dst[0] {
		copy(dst, got)
	}
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
