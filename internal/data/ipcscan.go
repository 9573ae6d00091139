package data

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// This file checks the framing and FlatBuffers metadata of an Arrow IPC
// stream before anything else reads it. Arrow's reader, which reads a
// shard's schema message and a dataset file's messages, trusts vector
// lengths and offsets in the metadata: a 300-byte message can make it
// allocate gigabytes (it sizes slices from claimed vector lengths) or
// recurse forever (a field whose children point back at itself), and
// neither out-of-memory nor stack exhaustion can be recovered.
// nextMessage walks exactly the tables a reader walks, checks that every
// table, vector and string lies inside its message, and bounds the nesting
// depth and the total bytes the walk visits (so shared sub-objects cannot
// amplify the work). scanShardStream enforces on top the message sequence a
// shard may have and returns each record batch's field nodes and buffers
// for DecodeShard; checkTableMessage enforces the sequence LoadTable
// accepts, one message at a time as a dataset file is read.
//
// Compressed bodies are checked too: every compressed buffer's stated
// uncompressed length must fit the decode budget, and a ZSTD buffer must
// hold exactly one frame whose content size is at most that length and
// whose window is at most max(8 MiB, 2 × that length), so that no frame
// header can make a decoder reserve more than the buffer claims.

// IPC stream framing and metadata limits.
const (
	ipcContinuation = 0xffffffff
	// maxShardMetadata bounds one message's FlatBuffers metadata. A shard's
	// schema message is a few hundred bytes and a batch's about two hundred.
	maxShardMetadata = 1 << 20
	// maxTableMetadata bounds one message's metadata in a dataset file
	// LoadTable reads: a schema of a million columns fits.
	maxTableMetadata = 256 << 20
	// maxFieldDepth bounds how deeply schema fields may nest.
	maxFieldDepth = 32
)

// FlatBuffers union tags of the Arrow IPC schema (Message.fbs, Schema.fbs).
const (
	fbHeaderSchema          = 1
	fbHeaderDictionaryBatch = 2
	fbHeaderRecordBatch     = 3
	fbTypeTimestamp         = 10
	fbTypeUnion             = 14
	fbCompressionLZ4Frame   = 0
	fbCompressionZSTD       = 1
)

// ZSTD frame limits (RFC 8878).
const (
	zstdMagic     = 0xfd2fb528
	zstdMinWindow = 1 << 10
	// zstdMaxWindow is the largest window accepted regardless of the
	// buffer's size: klauspost's streaming encoder (behind arrow-go's
	// writer) uses 8 MiB windows at its default level.
	zstdMaxWindow = 8 << 20
)

// ipcStreamInfo summarises a scanned stream.
type ipcStreamInfo struct {
	schemaEnd int        // the schema message ends at b[schemaEnd]
	batches   []ipcBatch // the record batch messages, in order
	rows      int64      // total rows over all batches
}

// ipcBatch is a checked record batch message: its metadata, and its body,
// inside which every buffer lies.
type ipcBatch struct {
	ipcMessage
	body []byte
}

// scanShardStream checks that b is a framed IPC stream of one schema message
// followed by record batch messages and the end-of-stream marker, with
// nothing after it, every message's metadata well formed, every body inside
// b, at most maxRows rows in total, and every body buffer inside its body
// and, if compressed, a single well-bounded ZSTD frame of at most maxBuffer
// uncompressed bytes.
func scanShardStream(b []byte, maxRows int, maxBuffer int64) (ipcStreamInfo, error) {
	var info ipcStreamInfo
	if bytes.HasPrefix(b, []byte("ARROW1")) {
		return info, errors.New(`expected the Arrow IPC stream format, got the IPC file format (magic "ARROW1")`)
	}
	err := scanMessages(b, maxShardMetadata, false, func(msg, end int, m ipcMessage, body []byte) error {
		if err := checkMessageOrder(msg, m.header); err != nil {
			return err
		}
		switch m.header {
		case fbHeaderSchema:
			info.schemaEnd = end
		case fbHeaderRecordBatch:
			if m.rows < 0 || m.rows > int64(maxRows)-info.rows {
				return fmt.Errorf("record batch %d: expected at most %d rows in the shard, got %d after %d earlier rows",
					len(info.batches), maxRows, m.rows, info.rows)
			}
			if err := checkBatchBody(body, m, bodyLimits{maxBuffer: maxBuffer, why: " for this shard size"}); err != nil {
				return fmt.Errorf("record batch %d: %w", len(info.batches), err)
			}
			info.rows += m.rows
			info.batches = append(info.batches, ipcBatch{ipcMessage: m, body: body})
		}
		return nil
	})
	return info, err
}

// checkTableMessage applies LoadTable's rules to message msg of a dataset
// stream, whose metadata and body nextMessage has checked: one schema
// message, then record batches (no dictionaries: a dataset's columns are
// numeric), every body buffer inside its body and at most maxBuffer bytes
// once uncompressed (ZSTD frames are checked in full, LZ4 frames only by
// that stated length). batches counts the record batches seen.
func checkTableMessage(msg int, batches *int, m ipcMessage, body []byte, maxBuffer int64) error {
	if m.header == fbHeaderDictionaryBatch {
		return fmt.Errorf("message %d: expected a %s, got a dictionary batch (dictionary-encoded columns are not supported: a dataset's columns must be numeric)",
			msg, map[bool]string{true: "schema message", false: "record batch message"}[msg == 0])
	}
	if err := checkMessageOrder(msg, m.header); err != nil || m.header != fbHeaderRecordBatch {
		return err
	}
	if m.rows < 0 {
		return fmt.Errorf("record batch %d: expected a row count ≥ 0, got %d", *batches, m.rows)
	}
	lim := bodyLimits{maxBuffer: maxBuffer, why: " (the dataset budget: " + budgetIs + ")", allowLZ4: true}
	if err := checkBatchBody(body, m, lim); err != nil {
		return fmt.Errorf("record batch %d: %w", *batches, err)
	}
	*batches++
	return nil
}

// checkMessageOrder checks that message msg of a stream is a schema
// message if it is the first, and a record batch if not: the sequence both
// a shard and a dataset file must have.
func checkMessageOrder(msg int, header byte) error {
	switch {
	case msg == 0 && header != fbHeaderSchema:
		return fmt.Errorf("message 0: expected a schema message, got %s", headerName(header))
	case msg > 0 && header != fbHeaderRecordBatch:
		return fmt.Errorf("message %d: expected a record batch message, got %s", msg, headerName(header))
	}
	return nil
}

// byteSource yields a stream's bytes in order for nextMessage.
type byteSource interface {
	// take returns the next n bytes; nextMessage asks for no more than
	// remain.
	take(n int64) ([]byte, error)
	remain() int64
	pos() int64
}

// memSource is a byteSource over bytes in memory: take returns sub-slices.
type memSource struct {
	b   []byte
	off int64
}

func (s *memSource) take(n int64) ([]byte, error) {
	p := s.b[s.off : s.off+n]
	s.off += n
	return p, nil
}
func (s *memSource) remain() int64 { return int64(len(s.b)) - s.off }
func (s *memSource) pos() int64    { return s.off }

// scanMessages walks the framed messages of an IPC stream in b with
// nextMessage and calls visit for each with the message's index, the
// position just after its body, what its metadata says and its body.
func scanMessages(b []byte, maxMeta int64, eosOptional bool, visit func(msg, end int, m ipcMessage, body []byte) error) error {
	if len(b) == 0 {
		return errors.New("expected an Arrow IPC stream, got 0 bytes")
	}
	src := &memSource{b: b}
	for msg := 0; ; msg++ {
		m, parts, err := nextMessage(src, msg, maxMeta, eosOptional)
		if err != nil || parts == nil || len(parts) == 1 { // an error, the end, or the end-of-stream marker
			return err
		}
		if err := visit(msg, int(src.pos()), m, parts[2]); err != nil {
			return err
		}
	}
}

// nextMessage reads message msg of an IPC stream from src and checks its
// prefix, its FlatBuffers metadata (at most maxMeta bytes, see
// checkMessage), and that its body lies inside the stream. It returns the
// message's metadata and its parts as read: prefix, metadata and body; or
// only the 8-byte end-of-stream marker, which must end the stream and may
// not come first; or no parts at the stream's end, which, if eosOptional,
// may come instead of the marker after a message.
func nextMessage(src byteSource, msg int, maxMeta int64, eosOptional bool) (ipcMessage, [][]byte, error) {
	var m ipcMessage
	start := src.pos()
	if src.remain() == 0 && eosOptional && msg > 0 {
		return m, nil, nil
	}
	if src.remain() < 8 {
		return m, nil, fmt.Errorf("message %d at byte %d: expected an 8-byte message prefix or end-of-stream marker, got %d bytes (truncated stream?)", msg, start, src.remain())
	}
	prefix, err := src.take(8)
	if err != nil {
		return m, nil, fmt.Errorf("message %d at byte %d: %w", msg, start, err)
	}
	if c := binary.LittleEndian.Uint32(prefix); c != ipcContinuation {
		return m, nil, fmt.Errorf("message %d at byte %d: expected the Arrow IPC continuation marker 0xffffffff, got 0x%08x", msg, start, c)
	}
	metaLen := int64(int32(binary.LittleEndian.Uint32(prefix[4:])))
	if metaLen == 0 { // end of stream
		if msg == 0 {
			return m, nil, fmt.Errorf("expected a schema message first, got the end-of-stream marker")
		}
		if src.remain() != 0 {
			return m, nil, fmt.Errorf("expected the stream to end after its end-of-stream marker at byte %d, got %d more bytes", start, src.remain())
		}
		return m, [][]byte{prefix}, nil
	}
	if metaLen < 4 || metaLen > maxMeta {
		return m, nil, fmt.Errorf("message %d at byte %d: expected a metadata length in [4, %d], got %d", msg, start, maxMeta, metaLen)
	}
	if metaLen > src.remain() {
		return m, nil, fmt.Errorf("message %d at byte %d: expected %d metadata bytes, only %d remain (truncated stream?)", msg, start, metaLen, src.remain())
	}
	meta, err := src.take(metaLen)
	if err != nil {
		return m, nil, fmt.Errorf("message %d at byte %d: %w", msg, start, err)
	}
	if m, err = checkMessage(meta); err != nil {
		return m, nil, fmt.Errorf("message %d at byte %d: malformed metadata: %w", msg, start, err)
	}
	if m.bodyLen < 0 || m.bodyLen > src.remain() {
		return m, nil, fmt.Errorf("message %d at byte %d: expected %d body bytes, only %d remain (truncated stream?)", msg, start, m.bodyLen, src.remain())
	}
	body, err := src.take(m.bodyLen)
	if err != nil {
		return m, nil, fmt.Errorf("message %d at byte %d: %w", msg, start, err)
	}
	return m, [][]byte{prefix, meta, body}, nil
}

// ipcFileSection finds the stream section of an Arrow IPC file (format
// version 2, "Feather") of size bytes: the bytes between the leading magic
// and its padding and the footer, found from the footer length before the
// trailing magic. It returns the section's offset and length. The footer
// itself is not read: LoadTable reads the file's messages in stream order.
func ipcFileSection(r io.ReaderAt, size int64) (off, n int64, err error) {
	const magic = "ARROW1"
	var tail [4 + len(magic)]byte
	if size < 8+int64(len(tail)) {
		return 0, 0, fmt.Errorf("expected an IPC file ending in a footer and the magic %q, got %d bytes (truncated file?)", magic, size)
	}
	if _, err := r.ReadAt(tail[:], size-int64(len(tail))); err != nil {
		return 0, 0, err
	}
	if string(tail[4:]) != magic {
		return 0, 0, fmt.Errorf("expected an IPC file ending in a footer and the magic %q, got %d bytes ending %q (truncated file, or bytes after the footer?)",
			magic, size, tail[4:])
	}
	footerLen := int64(int32(binary.LittleEndian.Uint32(tail[:])))
	footerStart := size - int64(len(tail)) - footerLen
	if footerLen <= 0 || footerStart < 8 {
		return 0, 0, fmt.Errorf("expected a footer length in [1, %d], got %d", size-int64(len(tail))-8, footerLen)
	}
	return 8, footerStart - 8, nil
}

// headerName names a MessageHeader union tag.
func headerName(h byte) string {
	switch h {
	case 0:
		return "a message without header"
	case fbHeaderSchema:
		return "a schema message"
	case fbHeaderDictionaryBatch:
		return "a dictionary batch (shards use no dictionaries)"
	case fbHeaderRecordBatch:
		return "a record batch message"
	case 4, 5:
		return "a tensor message"
	}
	return fmt.Sprintf("unknown message type %d", h)
}

// ipcMessage is what checkMessage learns from a message's metadata.
type ipcMessage struct {
	header  byte
	bodyLen int64
	// For record batches:
	rows       int64      // RecordBatch.length
	compressed bool       // RecordBatch.compression is present
	codec      byte       // its codec
	nodes      [][2]int64 // RecordBatch.nodes as (length, null count)
	buffers    [][2]int64 // RecordBatch.buffers as (offset, length)
}

// bodyLimits are what checkBatchBody accepts: buffers of at most maxBuffer
// bytes once uncompressed (errors give why after the bound), and LZ4
// compression too if allowLZ4.
type bodyLimits struct {
	maxBuffer int64
	why       string
	allowLZ4  bool
}

// checkBatchBody checks that every buffer of a record batch lies inside
// body and that compressed buffers are ZSTD frames of bounded size, or, if
// allowed, LZ4 frames that state a bounded size.
func checkBatchBody(body []byte, m ipcMessage, lim bodyLimits) error {
	maxBuffer, allowLZ4 := lim.maxBuffer, lim.allowLZ4
	lz4 := allowLZ4 && m.compressed && m.codec == fbCompressionLZ4Frame
	switch {
	case lz4, !m.compressed, m.codec == fbCompressionZSTD:
	case allowLZ4:
		return fmt.Errorf("expected LZ4, ZSTD or no body compression, got codec %d", m.codec)
	default:
		return fmt.Errorf("expected ZSTD or no body compression, got codec %d", m.codec)
	}
	for j, ol := range m.buffers {
		off, n := ol[0], ol[1]
		if off < 0 || n < 0 || off > int64(len(body)) || n > int64(len(body))-off {
			return fmt.Errorf("buffer %d: expected bytes [%d, %d) to lie inside the %d-byte body", j, off, off+n, len(body))
		}
		if !m.compressed || n == 0 {
			continue
		}
		if n < 8 {
			return fmt.Errorf("buffer %d: expected an 8-byte uncompressed-length prefix, got %d bytes", j, n)
		}
		src, frame, size := bufferBytes(body, true, off, n)
		if !frame {
			continue
		}
		if size < 0 || size > maxBuffer {
			return fmt.Errorf("buffer %d: expected an uncompressed length in [0, %d]%s, got %d", j, maxBuffer, lim.why, size)
		}
		if lz4 {
			continue
		}
		if err := checkZstdFrame(src, size); err != nil {
			return fmt.Errorf("buffer %d: %w", j, err)
		}
	}
	return nil
}

// bufferBytes reads the n bytes at off in a record batch's body (inside it,
// and at least 8 long if compressed and not empty): the bytes stored,
// whether they are a ZSTD frame, and how many bytes they stand for. A
// compressed buffer starts with its uncompressed length, -1 when it is
// stored uncompressed after all.
func bufferBytes(body []byte, compressed bool, off, n int64) (src []byte, frame bool, size int64) {
	src = body[off : off+n]
	if !compressed || n == 0 {
		return src, false, n
	}
	size = int64(binary.LittleEndian.Uint64(src))
	if size == -1 {
		return src[8:], false, n - 8
	}
	return src[8:], true, size
}

// checkZstdFrame checks that data is exactly one ZSTD frame (RFC 8878,
// section 3.1.1) decoding to at most size bytes, with a window that a
// decoder can reserve without harm.
func checkZstdFrame(data []byte, size int64) error {
	p := 0
	need := func(n int) error {
		if n > len(data)-p {
			return fmt.Errorf("ZSTD frame truncated at byte %d of %d", p, len(data))
		}
		return nil
	}
	if err := need(5); err != nil {
		return err
	}
	if m := binary.LittleEndian.Uint32(data); m != zstdMagic {
		return fmt.Errorf("expected a ZSTD frame (magic 0x%08x), got 0x%08x", uint32(zstdMagic), m)
	}
	fhd := data[4]
	p = 5
	single := fhd&0x20 != 0
	if fhd&0x08 != 0 {
		return errors.New("ZSTD frame header has its reserved bit set")
	}
	var window uint64
	if !single {
		if err := need(1); err != nil {
			return err
		}
		exp, mantissa := uint64(data[p]>>3), uint64(data[p]&7)
		base := uint64(1) << (10 + exp)
		window = base + base/8*mantissa
		p++
	}
	p += [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	fcsLen := [4]int{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcsLen = 1
	}
	if err := need(fcsLen); err != nil {
		return err
	}
	var content uint64
	hasContent := fcsLen > 0
	switch fcsLen {
	case 1:
		content = uint64(data[p])
	case 2:
		content = uint64(binary.LittleEndian.Uint16(data[p:])) + 256
	case 4:
		content = uint64(binary.LittleEndian.Uint32(data[p:]))
	case 8:
		content = binary.LittleEndian.Uint64(data[p:])
	}
	p += fcsLen
	if hasContent && content > uint64(size) {
		return fmt.Errorf("ZSTD frame content size %d exceeds the buffer's uncompressed length %d", content, size)
	}
	if single {
		window = max(content, zstdMinWindow)
	}
	if limit := max(uint64(zstdMaxWindow), 2*uint64(size)); window > limit {
		return fmt.Errorf("ZSTD frame window of %d bytes exceeds %d for a %d-byte buffer", window, limit, size)
	}
	// Raw and RLE blocks say how much they decode to; their sum may not
	// pass the frame's content size or the buffer's length (a decoder
	// would grow its output for them before checking either).
	bound := uint64(size)
	if hasContent {
		bound = content
	}
	var plain uint64
	for last := false; !last; {
		if err := need(3); err != nil {
			return err
		}
		h := uint32(data[p]) | uint32(data[p+1])<<8 | uint32(data[p+2])<<16
		p += 3
		last = h&1 != 0
		n := int(h >> 3)
		switch (h >> 1) & 3 {
		case 0, 1: // raw: n bytes; RLE: one byte repeated n times
			if plain += uint64(n); plain > bound {
				return fmt.Errorf("ZSTD frame's raw and RLE blocks decode to more than %d bytes, its content size or the buffer's length", bound)
			}
			if (h>>1)&3 == 1 {
				n = 1
			}
		case 3:
			return fmt.Errorf("ZSTD block at byte %d has the reserved block type", p-3)
		}
		if err := need(n); err != nil {
			return err
		}
		p += n
	}
	if fhd&0x04 != 0 { // content checksum
		if err := need(4); err != nil {
			return err
		}
		p += 4
	}
	if p != len(data) {
		return fmt.Errorf("expected one ZSTD frame, got %d bytes after it", len(data)-p)
	}
	return nil
}

// checkMessage verifies the FlatBuffers Message table in meta and the header
// table it carries.
func checkMessage(meta []byte) (ipcMessage, error) {
	var m ipcMessage
	v := &fbVerifier{buf: meta, budget: 4*int64(len(meta)) + 4096}
	root, err := v.u32(0)
	if err != nil {
		return m, err
	}
	msg, err := v.table(int64(root))
	if err != nil {
		return m, fmt.Errorf("Message: %w", err)
	}
	if _, _, err := v.field(msg, 0, 2); err != nil {
		return m, fmt.Errorf("Message.version: %w", err)
	}
	if m.header, err = v.scalar8(msg, 1); err != nil {
		return m, fmt.Errorf("Message.header_type: %w", err)
	}
	if m.bodyLen, err = v.scalar64(msg, 3); err != nil {
		return m, fmt.Errorf("Message.bodyLength: %w", err)
	}
	if err := v.keyValues(msg, 4); err != nil {
		return m, fmt.Errorf("Message.custom_metadata: %w", err)
	}
	hdr, ok, err := v.tableField(msg, 2)
	if err != nil {
		return m, fmt.Errorf("Message.header: %w", err)
	}
	if !ok {
		return m, errors.New("Message.header: expected a header table, got none")
	}
	switch m.header {
	case fbHeaderSchema:
		err = v.schema(hdr)
	case fbHeaderRecordBatch:
		err = v.recordBatch(hdr, &m)
	}
	return m, err
}

// fbVerifier bounds-checks FlatBuffers objects inside buf. budget is the
// number of bytes of tables and vectors the walk may still visit; a buffer
// without shared sub-objects never needs more than len(buf).
type fbVerifier struct {
	buf    []byte
	budget int64
}

// fbTable is a verified table: its position and its vtable's.
type fbTable struct{ pos, vt, vtLen int64 }

// errFBBounds reports an object that does not fit in the buffer.
type errFBBounds struct{}

func (errFBBounds) Error() string { return "offset or length outside the message metadata" }

// need checks that [pos, pos+n) lies inside the buffer.
func (v *fbVerifier) need(pos, n int64) error {
	if pos < 0 || n < 0 || pos > int64(len(v.buf)) || n > int64(len(v.buf))-pos {
		return errFBBounds{}
	}
	return nil
}

// charge spends n bytes of the visiting budget.
func (v *fbVerifier) charge(n int64) error {
	v.budget -= n
	if v.budget < 0 {
		return errors.New("metadata visits more bytes than it holds (shared or cyclic objects)")
	}
	return nil
}

func (v *fbVerifier) u16(pos int64) (uint16, error) {
	if err := v.need(pos, 2); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(v.buf[pos:]), nil
}

func (v *fbVerifier) u32(pos int64) (uint32, error) {
	if err := v.need(pos, 4); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(v.buf[pos:]), nil
}

// table verifies the table at pos and its vtable.
func (v *fbVerifier) table(pos int64) (fbTable, error) {
	soff, err := v.u32(pos)
	if err != nil {
		return fbTable{}, err
	}
	vt := pos - int64(int32(soff))
	vtLen, err := v.u16(vt)
	if err != nil {
		return fbTable{}, err
	}
	if err := v.need(vt, int64(vtLen)); err != nil {
		return fbTable{}, err
	}
	if err := v.charge(4 + int64(vtLen)); err != nil {
		return fbTable{}, err
	}
	return fbTable{pos: pos, vt: vt, vtLen: int64(vtLen)}, nil
}

// field returns the position of field i of t and whether it is present,
// checking that size bytes there lie inside the buffer. Like the FlatBuffers
// runtime, a slot is present when its vtable entry lies below the vtable
// length and is non-zero.
func (v *fbVerifier) field(t fbTable, i int, size int64) (int64, bool, error) {
	slot := 4 + 2*int64(i)
	if slot >= t.vtLen {
		return 0, false, nil
	}
	off, err := v.u16(t.vt + slot)
	if err != nil || off == 0 {
		return 0, false, err
	}
	p := t.pos + int64(off)
	return p, true, v.need(p, size)
}

// scalar8 reads a one-byte field, 0 when absent.
func (v *fbVerifier) scalar8(t fbTable, i int) (byte, error) {
	p, ok, err := v.field(t, i, 1)
	if err != nil || !ok {
		return 0, err
	}
	return v.buf[p], nil
}

// scalar64 reads an eight-byte signed field, 0 when absent.
func (v *fbVerifier) scalar64(t fbTable, i int) (int64, error) {
	p, ok, err := v.field(t, i, 8)
	if err != nil || !ok {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(v.buf[p:])), nil
}

// ref follows the offset stored in field i of t.
func (v *fbVerifier) ref(t fbTable, i int) (int64, bool, error) {
	p, ok, err := v.field(t, i, 4)
	if err != nil || !ok {
		return 0, false, err
	}
	off, _ := v.u32(p)
	return p + int64(off), true, nil
}

// tableField verifies the table referenced by field i of t.
func (v *fbVerifier) tableField(t fbTable, i int) (fbTable, bool, error) {
	p, ok, err := v.ref(t, i)
	if err != nil || !ok {
		return fbTable{}, false, err
	}
	tt, err := v.table(p)
	return tt, err == nil, err
}

// vector verifies the vector referenced by field i of t, with elements of
// elemSize bytes, and returns the position of its first element and its
// length. Strings are byte vectors.
func (v *fbVerifier) vector(t fbTable, i int, elemSize int64) (start, n int64, err error) {
	p, ok, err := v.ref(t, i)
	if err != nil || !ok {
		return 0, 0, err
	}
	l, err := v.u32(p)
	if err != nil {
		return 0, 0, err
	}
	n = int64(l)
	if err := v.need(p+4, n*elemSize); err != nil {
		return 0, 0, err
	}
	if err := v.charge(4 + n*elemSize); err != nil {
		return 0, 0, err
	}
	return p + 4, n, nil
}

// tables verifies a vector of tables in field i of t and calls each for
// every element.
func (v *fbVerifier) tables(t fbTable, i int, each func(j int64, e fbTable) error) error {
	start, n, err := v.vector(t, i, 4)
	if err != nil {
		return err
	}
	for j := range n {
		p := start + 4*j
		off, _ := v.u32(p)
		e, err := v.table(p + int64(off))
		if err != nil {
			return fmt.Errorf("element %d: %w", j, err)
		}
		if err := each(j, e); err != nil {
			return fmt.Errorf("element %d: %w", j, err)
		}
	}
	return nil
}

// keyValues verifies a [KeyValue] custom_metadata vector in field i of t.
func (v *fbVerifier) keyValues(t fbTable, i int) error {
	return v.tables(t, i, func(_ int64, kv fbTable) error {
		if _, _, err := v.vector(kv, 0, 1); err != nil {
			return fmt.Errorf("key: %w", err)
		}
		if _, _, err := v.vector(kv, 1, 1); err != nil {
			return fmt.Errorf("value: %w", err)
		}
		return nil
	})
}

// schema verifies a Schema table: endianness, fields, custom_metadata,
// features.
func (v *fbVerifier) schema(s fbTable) error {
	if _, _, err := v.field(s, 0, 2); err != nil {
		return fmt.Errorf("Schema.endianness: %w", err)
	}
	if err := v.tables(s, 1, func(_ int64, f fbTable) error { return v.fieldTable(f, 1) }); err != nil {
		return fmt.Errorf("Schema.fields: %w", err)
	}
	if err := v.keyValues(s, 2); err != nil {
		return fmt.Errorf("Schema.custom_metadata: %w", err)
	}
	if _, _, err := v.vector(s, 3, 8); err != nil {
		return fmt.Errorf("Schema.features: %w", err)
	}
	return nil
}

// fieldTable verifies a Field table at nesting depth depth: name, type,
// dictionary, children (recursively) and custom_metadata.
func (v *fbVerifier) fieldTable(f fbTable, depth int) error {
	if depth > maxFieldDepth {
		return fmt.Errorf("fields nest deeper than %d levels", maxFieldDepth)
	}
	if _, _, err := v.vector(f, 0, 1); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	typ, err := v.scalar8(f, 2)
	if err != nil {
		return fmt.Errorf("type_type: %w", err)
	}
	tt, ok, err := v.tableField(f, 3)
	if err != nil {
		return fmt.Errorf("type: %w", err)
	}
	if ok {
		switch typ {
		case fbTypeTimestamp:
			_, _, err = v.vector(tt, 1, 1) // timezone
		case fbTypeUnion:
			_, _, err = v.vector(tt, 1, 4) // typeIds
		}
		if err != nil {
			return fmt.Errorf("type: %w", err)
		}
	}
	dict, ok, err := v.tableField(f, 4)
	if err != nil {
		return fmt.Errorf("dictionary: %w", err)
	}
	if ok {
		if _, _, err := v.tableField(dict, 1); err != nil {
			return fmt.Errorf("dictionary.indexType: %w", err)
		}
	}
	if err := v.tables(f, 5, func(_ int64, c fbTable) error { return v.fieldTable(c, depth+1) }); err != nil {
		return fmt.Errorf("children: %w", err)
	}
	if err := v.keyValues(f, 6); err != nil {
		return fmt.Errorf("custom_metadata: %w", err)
	}
	return nil
}

// pairs reads field i of t, a vector of 16-byte structs of two int64s
// (FieldNode, Buffer).
func (v *fbVerifier) pairs(t fbTable, i int) ([][2]int64, error) {
	start, n, err := v.vector(t, i, 16)
	if err != nil {
		return nil, err
	}
	out := make([][2]int64, n)
	for j := range out {
		p := start + 16*int64(j)
		out[j] = [2]int64{
			int64(binary.LittleEndian.Uint64(v.buf[p:])),
			int64(binary.LittleEndian.Uint64(v.buf[p+8:])),
		}
	}
	return out, nil
}

// recordBatch verifies a RecordBatch table and records its row count,
// compression, field nodes and buffers in m.
func (v *fbVerifier) recordBatch(rb fbTable, m *ipcMessage) error {
	var err error
	if m.rows, err = v.scalar64(rb, 0); err != nil {
		return fmt.Errorf("RecordBatch.length: %w", err)
	}
	if m.nodes, err = v.pairs(rb, 1); err != nil {
		return fmt.Errorf("RecordBatch.nodes: %w", err)
	}
	if m.buffers, err = v.pairs(rb, 2); err != nil {
		return fmt.Errorf("RecordBatch.buffers: %w", err)
	}
	comp, ok, err := v.tableField(rb, 3)
	if err != nil {
		return fmt.Errorf("RecordBatch.compression: %w", err)
	}
	if ok {
		m.compressed = true
		if m.codec, err = v.scalar8(comp, 0); err != nil {
			return fmt.Errorf("RecordBatch.compression.codec: %w", err)
		}
		method, err := v.scalar8(comp, 1)
		if err != nil {
			return fmt.Errorf("RecordBatch.compression.method: %w", err)
		}
		if method != 0 {
			return fmt.Errorf("RecordBatch.compression.method: expected BUFFER (0), got %d", method)
		}
	}
	if _, _, err := v.vector(rb, 4, 8); err != nil {
		return fmt.Errorf("RecordBatch.variadicBufferCounts: %w", err)
	}
	return nil
}
