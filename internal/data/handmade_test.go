package data

import (
	"bytes"
	"encoding/binary"
	"math"
	"runtime"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/endian"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/klauspost/compress/zstd"
)

// This file builds record batch messages by hand, for streams no Arrow
// writer makes, and holds DecodeShard to Arrow's reader on them.

// batchMessage frames one hand-made record batch message (compressed: with
// ZSTD buffer compression) with the given field nodes, buffers and body.
func batchMessage(rows int64, nodes, bufs [][2]int64, compressed bool, body []byte) []byte {
	for len(body)%8 != 0 {
		body = append(body, 0)
	}
	meta := batchMetadata(flatbuffers.NewBuilder(256), int(rows), nodes, bufs, len(body), compressed)
	return appendMessage(nil, meta, body)
}

// schemaMessage is the schema message EncodeShard writes for dim, classes.
func schemaMessage(t testing.TB, dim, classes int) []byte {
	t.Helper()
	enc, err := EncodeShard(&Dataset{X: []float32{}, Y: []int32{}, Dim: dim, Classes: classes})
	if err != nil {
		t.Fatal(err)
	}
	info, err := scanShardStream(enc, 1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return enc[:info.schemaEnd]
}

// ipcStream joins messages and ends the stream.
func ipcStream(msgs ...[]byte) []byte {
	return append(bytes.Join(msgs, nil), ipcEndOfStream...)
}

func int32LE(v ...int32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, uint32(x))
	}
	return b
}

func float32LE(v ...float32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// compressedBuffer is a compressed buffer's bytes: the stated size and the
// frame.
func compressedBuffer(size int64, frame []byte) []byte {
	return append(binary.LittleEndian.AppendUint64(nil, uint64(size)), frame...)
}

// twoRowBatch is a batch of rows {1: 1 2 3 4} and {2: 5 6 7 8} whose label
// buffer is lab (compressed) and whose features are stored uncompressed.
func twoRowBatch(lab []byte) []byte {
	feats := compressedBuffer(-1, float32LE(1, 2, 3, 4, 5, 6, 7, 8))
	body := append(bytes.Clone(lab), make([]byte, (8-len(lab)%8)%8)...)
	off := int64(len(body))
	body = append(body, feats...)
	nodes := [][2]int64{{2, 0}, {2, 0}, {8, 0}}
	bufs := [][2]int64{{0, 0}, {0, int64(len(lab))}, {0, 0}, {0, 0}, {off, int64(len(feats))}}
	return batchMessage(2, nodes, bufs, true, body)
}

// streamingFrame compresses b into a frame that does not state its size.
func streamingFrame(t testing.TB, parts ...[]byte) []byte {
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// handmadeStreams are streams no Arrow writer makes, by name, with what
// DecodeShard (dim 4, classes 3, maxRows 64) must say of them: "" to
// decode (want rows), or its error. arrowToo says whether Arrow's reader
// agrees.
func handmadeStreams(t testing.TB) []struct {
	name, err string
	b         []byte
	rows      int
	arrowToo  bool
} {
	schema := schemaMessage(t, 4, 3)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	uncompressed := append(int32LE(1, 2), float32LE(1, 2, 3, 4, 5, 6, 7, 8)...)
	okBufs := [][2]int64{{0, 0}, {0, 8}, {8, 0}, {8, 0}, {8, 32}}
	corrupt := enc.EncodeAll(bytes.Repeat([]byte{7}, 100), nil)
	corrupt[len(corrupt)-1] ^= 0xff // the content checksum
	badSum := enc.EncodeAll(int32LE(1, 2), nil)
	badSum[len(badSum)-1] ^= 0xff
	zeroRows := [][2]int64{{0, 0}, {0, 0}, {0, 0}}
	return []struct {
		name, err string
		b         []byte
		rows      int
		arrowToo  bool
	}{
		{name: "uncompressed", b: ipcStream(schema, batchMessage(2, [][2]int64{{2, 0}, {2, 0}, {8, 0}}, okBufs, false, uncompressed)), rows: 2, arrowToo: true},
		{name: "label frame without a content size", b: ipcStream(schema, twoRowBatch(compressedBuffer(8, streamingFrame(t, int32LE(1), int32LE(2))))), rows: 2, arrowToo: true},
		{name: "element node longer than the rows", b: ipcStream(schema, batchMessage(2, [][2]int64{{2, 0}, {2, 0}, {1 << 40, 0}}, okBufs, false, uncompressed)),
			err: `column "features": expected 2×4 feature values, got 1099511627776`, arrowToo: true},
		// Arrow's reader reads no buffer of a batch of no rows.
		{name: "no rows, corrupt frame", b: ipcStream(schema, batchMessage(0, zeroRows, [][2]int64{{0, 0}, {0, int64(len(corrupt) + 8)}, {0, 0}, {0, 0}, {0, 0}}, true, compressedBuffer(100, corrupt))), rows: 0, arrowToo: true},
		// Arrow's reader takes the stated number of bytes and ignores
		// the rest of the frame, or its checksum.
		{name: "frame longer than stated", b: ipcStream(schema, twoRowBatch(compressedBuffer(8, streamingFrame(t, int32LE(1, 2), int32LE(1, 2, 0, 0))))),
			err: `record batch 0: buffer 1: ZSTD frame's raw and RLE blocks decode to more than 8 bytes`},
		// A frame whose header says 4 bytes holding a raw block of 8.
		{name: "raw block past the content size", b: ipcStream(schema, twoRowBatch(compressedBuffer(8, rawFrame(4, int32LE(1, 2))))),
			err: `record batch 0: buffer 1: ZSTD frame's raw and RLE blocks decode to more than 4 bytes`},
		{name: "bad checksum", b: ipcStream(schema, twoRowBatch(compressedBuffer(8, badSum))), err: `column "label": buffer 1: corrupt ZSTD frame`},
		// Rows claimed with no data behind them are refused before any
		// is reserved.
		{name: "rows without buffers", b: ipcStream(schema, batchMessage(60, [][2]int64{{60, 0}, {60, 0}, {240, 0}}, [][2]int64{{0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}}, false, nil)),
			err: `column "label": buffer 1: expected at least 240 bytes, got 0`, arrowToo: true},
	}
}

func TestDecodeShardHandmade(t *testing.T) {
	for _, tc := range handmadeStreams(t) {
		t.Run(tc.name, func(t *testing.T) {
			d, err := DecodeShard(tc.b, 4, 3, 64)
			od, oerr := decodeShardArrow(tc.b, 4, 3, 64)
			if tc.err != "" {
				wantErr(t, err, tc.err)
				if tc.arrowToo && oerr == nil {
					t.Errorf("Arrow's reader decoded it")
				}
				return
			}
			if err != nil || d.Len() != tc.rows {
				t.Fatalf("decoded %v rows, err %v; want %d rows", rowsOrNone(d), err, tc.rows)
			}
			if tc.rows == 2 && (d.Y[0] != 1 || d.Y[1] != 2 || d.X[7] != 8) {
				t.Fatalf("decoded labels %v, features %v", d.Y, d.X)
			}
			if oerr != nil || !bitEqual(d, od) {
				t.Fatalf("Arrow's reader: %v", oerr)
			}
		})
	}
}

func rowsOrNone(d *Dataset) int {
	if d == nil {
		return -1
	}
	return d.Len()
}

// rawFrame is a single-segment ZSTD frame stating content bytes and
// holding b as one raw block, without a checksum.
func rawFrame(content uint32, b []byte) []byte {
	frame := binary.LittleEndian.AppendUint32(nil, zstdMagic)
	frame = append(frame, 0xa0) // single segment, a 4-byte content size
	frame = binary.LittleEndian.AppendUint32(frame, content)
	h := uint32(len(b))<<3 | 1 // raw, last
	frame = append(frame, byte(h), byte(h>>8), byte(h>>16))
	return append(frame, b...)
}

// rleFrame is a ZSTD frame stating content bytes (window 2^24) and
// holding blocks RLE blocks of 128 KiB of zeros: 4 bytes each.
func rleFrame(content uint32, blocks int) []byte {
	frame := binary.LittleEndian.AppendUint32(nil, zstdMagic)
	frame = append(frame, 0x80, 0x70) // a 4-byte content size; window 2^24
	frame = binary.LittleEndian.AppendUint32(frame, content)
	for i := range blocks {
		h := uint32(128<<10)<<3 | 1<<1
		if i == blocks-1 {
			h |= 1
		}
		frame = append(frame, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return frame
}

// TestDecodeShardNoAmplification: small streams whose frames are stated
// to decode to a lot (legal: RLE blocks) cost no more than the rows they
// claim. Many batches of no rows decode as Arrow's reader does, to nothing,
// without decoding their buffers; a frame whose RLE blocks pass the size
// it states is refused before the rows are reserved.
func TestDecodeShardNoAmplification(t *testing.T) {
	const dim, classes, maxRows = 784, 10, 60000
	size := int64(128<<10) * 1000
	buf := compressedBuffer(size, rleFrame(uint32(size), 1000))
	msg := batchMessage(0, [][2]int64{{0, 0}, {0, 0}, {0, 0}}, [][2]int64{{0, 0}, {0, int64(len(buf))}, {0, 0}, {0, 0}, {0, int64(len(buf))}}, true, buf)
	msgs := [][]byte{schemaMessage(t, dim, classes)}
	for range 150 {
		msgs = append(msgs, msg)
	}
	b := ipcStream(msgs...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	d, err := DecodeShard(b, dim, classes, maxRows)
	runtime.ReadMemStats(&after)
	if err != nil || d.Len() != 0 {
		t.Fatalf("decoded %v rows, err %v; want 0 rows", rowsOrNone(d), err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Fatalf("decoding a %d-byte stream allocated %d bytes", len(b), grew)
	}

	// 20,000 rows whose features frame states their 62,720,000 bytes but
	// holds one RLE block more.
	const rows = 20000
	need := uint32(rows * dim * 4)
	feats := compressedBuffer(int64(need), rleFrame(need, int(need/(128<<10))+2))
	labels := compressedBuffer(4*rows, rawFrame(4*rows, make([]byte, 4*rows)))
	body := append(bytes.Clone(labels), make([]byte, (8-len(labels)%8)%8)...)
	off := int64(len(body))
	body = append(body, feats...)
	b = ipcStream(schemaMessage(t, dim, classes), batchMessage(rows, [][2]int64{{rows, 0}, {rows, 0}, {rows * dim, 0}},
		[][2]int64{{0, 0}, {0, int64(len(labels))}, {0, 0}, {0, 0}, {off, int64(len(feats))}}, true, body))
	runtime.ReadMemStats(&before)
	_, err = DecodeShard(b, dim, classes, maxRows)
	runtime.ReadMemStats(&after)
	wantErr(t, err, "buffer 4: ZSTD frame's raw and RLE blocks decode to more than 62720000 bytes")
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Fatalf("decoding a %d-byte stream allocated %d bytes", len(b), grew)
	}
}

// TestDecodeShardOtherByteOrder decodes a stream whose schema says
// big-endian, as a big-endian writer makes it, and compares with Arrow's
// reader, which swaps the values to this machine's order.
func TestDecodeShardOtherByteOrder(t *testing.T) {
	if endian.IsBigEndian {
		t.Skip("the test writes big-endian values by swapping little-endian ones")
	}
	dim, classes := 4, 3
	md := arrow.NewMetadata([]string{ShardClassesKey}, []string{"3"})
	s := arrow.NewSchemaWithEndian(shardSchema(dim, classes).Fields(), &md, endian.BigEndian)
	rb := array.NewRecordBuilder(memory.DefaultAllocator, shardSchema(dim, classes))
	defer rb.Release()
	swap := func(v uint32) uint32 { return v>>24 | v>>8&0xff00 | v<<8&0xff0000 | v<<24 }
	rb.Field(0).(*array.Int32Builder).AppendValues([]int32{int32(swap(1)), int32(swap(2))}, nil)
	lb := rb.Field(1).(*array.FixedSizeListBuilder)
	for i := range 2 {
		lb.Append(true)
		for j := range 4 {
			lb.ValueBuilder().(*array.Float32Builder).Append(math.Float32frombits(swap(math.Float32bits(float32(i*4 + j)))))
		}
	}
	rec := rb.NewRecordBatch()
	defer rec.Release()
	big := array.NewRecordBatch(s, rec.Columns(), rec.NumRows())
	defer big.Release()
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(s), ipc.WithZstd())
	if err := w.Write(big); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := DecodeShard(buf.Bytes(), dim, classes, 64)
	if err != nil {
		t.Fatal(err)
	}
	od, err := decodeShardArrow(buf.Bytes(), dim, classes, 64)
	if err != nil {
		t.Fatal(err)
	}
	if d.Y[0] != 1 || d.Y[1] != 2 || d.X[5] != 5 || !bitEqual(d, od) {
		t.Fatalf("decoded labels %v features %v; Arrow's reader %v %v", d.Y, d.X, od.Y, od.X)
	}
}
