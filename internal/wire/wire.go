// Package wire is the binary protocol spoken between the aggregator and its
// trainers over one websocket per trainer. docs/PROTOCOL.md is its
// specification; this file and that document change together.
//
// Every websocket message is one frame of this layout (all integers
// little-endian):
//
//	offset 0  uint8   protocol version (Version)
//	offset 1  uint8   message type (Type)
//	offset 2  uint32  header length H (at most MaxHeader)
//	offset 6  H bytes header: a JSON object, its fields fixed by the type
//	offset 6+H        payload: raw little-endian float32 values (Model,
//	                  Update) or an Arrow IPC stream (Shard); empty otherwise
package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"unsafe"
)

// Version is the protocol version this package speaks. A peer that sends
// another version is refused with an Error frame naming both versions.
const Version = 1

// PrefixLen is the length of the fixed part of every frame.
const PrefixLen = 6

// MaxHeader bounds the JSON header of any frame; a larger header is refused
// before it is read.
const MaxHeader = 64 << 10

// TensorFrameMax is the largest frame that carries a tensor of params
// float32 values (a model or an update): its prefix, a header of at most
// MaxHeader bytes and the values. A side whose message limit is below it
// cannot carry the job's model.
func TensorFrameMax(params int) int64 {
	return PrefixLen + MaxHeader + 4*int64(params)
}

// Type identifies a frame's meaning and so its header and payload.
type Type uint8

// The message types. Direction: T→A trainer to aggregator, A→T the reverse.
const (
	TypeHello   Type = 1 // T→A: first frame; identity, token, cached shards
	TypeWelcome Type = 2 // A→T: accepted; the model architecture and limits
	TypePull    Type = 3 // T→A: idle, send me a task
	TypeModel   Type = 4 // A→T: global weights of one model version
	TypeShard   Type = 5 // A→T: one client's data shard (Arrow IPC stream)
	TypeTask    Type = 6 // A→T: train one client's shard on one model version
	TypeUpdate  Type = 7 // T→A: the result of a task: Δw, sample count, loss
	TypeDone    Type = 8 // A→T: the job is over; disconnect and exit
	TypeError   Type = 9 // both: something was wrong; says what
)

var typeNames = [...]string{"", "hello", "welcome", "pull", "model", "shard", "task", "update", "done", "error"}

// String returns the lower-case name used in docs/PROTOCOL.md.
func (t Type) String() string {
	if int(t) < len(typeNames) && t != 0 {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Hello is the trainer's first frame.
type Hello struct {
	Name   string   `json:"name"`             // human-readable trainer name, unique per process
	Token  string   `json:"token,omitempty"`  // shared secret, checked when the aggregator has one
	Shards []string `json:"shards,omitempty"` // content hashes of shards the trainer already holds
}

// ModelSpec names a model architecture: the name and layer sizes of
// internal/model.Spec.
type ModelSpec struct {
	Name  string `json:"name"`
	Sizes []int  `json:"sizes"`
}

// Welcome accepts a trainer.
type Welcome struct {
	ID         string    `json:"id"`          // the aggregator's name for this connection
	Model      ModelSpec `json:"model"`       // architecture every task of this job uses
	Params     int       `json:"params"`      // number of float32 parameters
	MaxMessage int64     `json:"max_message"` // largest frame the aggregator accepts
}

// Pull asks for the next task. It has no fields; the header is "{}".
type Pull struct{}

// Model carries the global weights of one version; the payload is
// Params float32 values.
type Model struct {
	Version int `json:"version"`
	Params  int `json:"params"`
}

// Shard carries one client's data; the payload is an Arrow IPC stream as
// written by internal/data.EncodeShard.
type Shard struct {
	Hash string `json:"hash"` // hex SHA-256 of the payload
	Rows int    `json:"rows"`
}

// Task asks the trainer to train one client's shard from one model version.
// The trainer has received the Model of Version and the Shard of Shard
// before it receives the Task.
type Task struct {
	ID      int64   `json:"id"`      // unique within the job
	Round   int     `json:"round"`   // 0-based round number
	Version int     `json:"version"` // model version to start from
	Client  int     `json:"client"`  // logical client index
	Shard   string  `json:"shard"`   // content hash of the client's shard
	Rows    int     `json:"rows"`    // the shard's row count, n_k
	Mode    string  `json:"mode"`    // "fedavg" (local SGD), "fedsgd" (one full-shard gradient step) or "eval" (evaluate the model on a test shard)
	Epochs  int     `json:"epochs"`  // E
	Batch   int     `json:"batch"`   // B; 0 means the whole shard
	LR      float32 `json:"lr"`      // client learning rate
	Seed    uint64  `json:"seed"`    // seeds the local shuffle
}

// Update is a task's result. For a training task the payload is
// Δw = w_local − w_version as Params float32 values; for an "eval" task
// there is no payload and Correct counts the test examples classified
// correctly.
type Update struct {
	Task    int64   `json:"task"`
	Round   int     `json:"round"`
	Version int     `json:"version"`
	Client  int     `json:"client"`
	Samples int     `json:"samples"`           // n_k, the examples trained on (or evaluated)
	Loss    float64 `json:"loss"`              // mean loss over the task: training loss, or test loss for eval
	Correct int     `json:"correct,omitempty"` // eval tasks: examples whose predicted class is right
	Seconds float64 `json:"seconds"`           // compute time of the task on the trainer
}

// Done ends the job for a trainer.
type Done struct {
	Reason string `json:"reason"`
}

// Error reports a problem. Fatal errors are followed by a close.
type Error struct {
	Code    string `json:"code"` // short machine-readable code, e.g. "version", "token", "update"
	Message string `json:"message"`
	Task    int64  `json:"task,omitempty"` // the task concerned, if any
	Fatal   bool   `json:"fatal,omitempty"`
}

// Frame is one decoded message. Header is the raw JSON header; Payload
// aliases the buffer the frame was decoded from.
type Frame struct {
	Type    Type
	Header  []byte
	Payload []byte
}

// ErrVersion is wrapped by Decode when a frame carries another protocol
// version.
var ErrVersion = errors.New("unsupported protocol version")

// Decode splits a frame into its parts, checking the version, the type and
// the header length. It does not copy: the Frame aliases b.
func Decode(b []byte) (Frame, error) {
	if len(b) < PrefixLen {
		return Frame{}, fmt.Errorf("frame of %d bytes is shorter than the %d-byte prefix", len(b), PrefixLen)
	}
	t, h, err := checkPrefix(b[:PrefixLen])
	if err != nil {
		return Frame{}, err
	}
	if int64(h) > int64(len(b)-PrefixLen) {
		return Frame{}, fmt.Errorf("%s header length %d exceeds the %d bytes left in the frame", t, h, len(b)-PrefixLen)
	}
	end := PrefixLen + int(h)
	return Frame{Type: t, Header: b[PrefixLen:end], Payload: b[end:]}, nil
}

// checkPrefix checks a frame's fixed prefix — version, type, header length
// within MaxHeader — and returns the type and the header length.
func checkPrefix(pre []byte) (Type, uint32, error) {
	if pre[0] != Version {
		return 0, 0, fmt.Errorf("%w: frame says version %d, this peer speaks version %d", ErrVersion, pre[0], Version)
	}
	t := Type(pre[1])
	if t < TypeHello || t > TypeError {
		return 0, 0, fmt.Errorf("unknown message type %d (known: 1..%d)", pre[1], TypeError)
	}
	h := binary.LittleEndian.Uint32(pre[2:6])
	if h > MaxHeader {
		return 0, 0, fmt.Errorf("%s header length %d exceeds the limit of %d bytes", t, h, MaxHeader)
	}
	return t, h, nil
}

// Parse decodes the frame's JSON header into v strictly: unknown fields and
// trailing data are errors. A reader of many frames keeps a HeaderDecoder
// instead, which does the same without allocating for each.
func (f Frame) Parse(v any) error {
	var d HeaderDecoder
	return d.Parse(f, v)
}

// A HeaderDecoder parses frame headers strictly, keeping its JSON decoder
// and buffer from one frame to the next instead of allocating them for
// each: a connection's reader holds one. It is not safe for concurrent
// use. Its zero value is ready to use.
type HeaderDecoder struct {
	r     bytes.Reader
	dec   *json.Decoder
	start int64 // where this header starts in the decoder's input
}

// Parse decodes f's JSON header into v: unknown fields and trailing data
// are errors.
func (d *HeaderDecoder) Parse(f Frame, v any) error {
	if d.dec == nil {
		d.dec = json.NewDecoder(&d.r)
		d.dec.DisallowUnknownFields()
		d.start = 0
	}
	if h := bytes.TrimLeft(f.Header, jsonSpace); len(h) == 0 || h[0] != '{' {
		// json would take null, or a value of the wrong type before its
		// error, as no fields set.
		return fmt.Errorf("%s header: not a JSON object", f.Type)
	}
	d.r.Reset(f.Header)
	err := d.dec.Decode(v)
	if err == nil {
		// Decoder.More is not enough: it reports no more values before a
		// stray '}' or ']'.
		err = trailing(f.Header, d.dec.InputOffset()-d.start)
	}
	if err != nil {
		// A json.Decoder keeps a syntax error, and bytes it has not
		// consumed; the next header starts with a new one.
		d.dec = nil
		return fmt.Errorf("%s header: %w", f.Type, err)
	}
	if len(f.Header) > keepHeaderBuffer {
		// Keep no large buffer for the connection's life.
		d.dec = nil
		return nil
	}
	// The decoder stops reading once the value is complete, so it may
	// have left some of the header's trailing white space unread, and
	// what it did read beyond the value is white space too: the next
	// header's value may follow it.
	d.start += int64(len(f.Header) - d.r.Len())
	return nil
}

// keepHeaderBuffer is the largest header after which a HeaderDecoder keeps
// its decoder (and the decoder's buffer, which grows to hold a header).
const keepHeaderBuffer = 4 << 10

// jsonSpace is JSON's white space.
const jsonSpace = " \t\r\n"

// trailing checks that only JSON white space follows the value that ends
// at offset end of header.
func trailing(header []byte, end int64) error {
	if end < 0 || end > int64(len(header)) {
		return errors.New("internal error: JSON value outside its header")
	}
	if len(bytes.TrimLeft(header[end:], jsonSpace)) > 0 {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// Prefix returns the fixed prefix and JSON header of a frame of type t. The
// payload, if any, follows it on the wire; see Write. A writer of many
// frames keeps a HeaderEncoder instead, which does the same into buffers
// it reuses.
func Prefix(t Type, header any) ([]byte, error) {
	var e HeaderEncoder
	return e.AppendPrefix(make([]byte, 0, 256), t, header)
}

// A HeaderEncoder writes frame prefixes and JSON headers, keeping its JSON
// encoder from one frame to the next: appending to a buffer with room
// allocates nothing (for a header without maps, passed as a pointer). It
// is not safe for concurrent use. Its zero value is ready to use.
type HeaderEncoder struct {
	enc *json.Encoder
	out appender // the frame being encoded, while AppendPrefix runs
}

// appender is an io.Writer that appends to its slice.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

// AppendPrefix appends the fixed prefix and JSON header of a frame of type
// t to dst, the same bytes Prefix returns, and returns the extended slice.
func (e *HeaderEncoder) AppendPrefix(dst []byte, t Type, header any) ([]byte, error) {
	if e.enc == nil {
		e.enc = json.NewEncoder(&e.out)
	}
	start := len(dst)
	e.out.b = append(dst, Version, byte(t), 0, 0, 0, 0)
	err := e.enc.Encode(header)
	b := e.out.b
	e.out.b = nil
	if err != nil {
		return dst, fmt.Errorf("encode %s header: %w", t, err)
	}
	b = b[:len(b)-1] // Encode ends the value with a newline; Marshal does not
	n := len(b) - start - PrefixLen
	if n > MaxHeader {
		return dst, fmt.Errorf("%s header of %d bytes exceeds the limit of %d", t, n, MaxHeader)
	}
	binary.LittleEndian.PutUint32(b[start+2:start+PrefixLen], uint32(n))
	return b, nil
}

// Write writes one whole frame to w: prefix, header, then payload.
func Write(w io.Writer, t Type, header any, payload []byte) error {
	p, err := Prefix(t, header)
	if err != nil {
		return err
	}
	if _, err := w.Write(p); err != nil {
		return err
	}
	if len(payload) > 0 {
		if _, err := w.Write(payload); err != nil {
			return err
		}
	}
	return nil
}

// Encode returns one whole frame as a new byte slice.
func Encode(t Type, header any, payload []byte) ([]byte, error) {
	p, err := Prefix(t, header)
	if err != nil {
		return nil, err
	}
	return append(p, payload...), nil
}

// littleEndian is true on hosts whose native float32 layout is the wire's,
// where tensors are reinterpreted in place instead of converted.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// Float32Bytes returns the wire form of v. On little-endian hosts it aliases
// v (no copy); elsewhere it is a converted copy.
func Float32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	if littleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	}
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// ReadFloat32s decodes a tensor payload of exactly len(dst) values into dst,
// checking the length and that every value is finite.
func ReadFloat32s(dst []float32, payload []byte) error {
	if len(payload) != 4*len(dst) {
		return fmt.Errorf("tensor payload of %d bytes, want %d (%d float32 values)", len(payload), 4*len(dst), len(dst))
	}
	if len(dst) == 0 {
		return nil
	}
	if littleEndian {
		copy(Float32Bytes(dst), payload)
	} else {
		decodeLE(dst, payload)
	}
	return CheckFinite(dst)
}

// decodeLE sets dst from the little-endian float32 values in b, for hosts
// whose own layout is not the wire's.
func decodeLE(dst []float32, b []byte) {
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}

// ReadHead reads a frame's prefix and JSON header from r — typically a
// websocket message reader — and checks the version, the type and the
// header length, leaving the payload unread in r. The prefix, then the
// header, are read into buf's storage when they fit. It never reads more
// than PrefixLen+MaxHeader bytes.
func ReadHead(r io.Reader, buf []byte) (Frame, error) {
	if cap(buf) < PrefixLen {
		buf = make([]byte, PrefixLen, 64)
	}
	pre := buf[:PrefixLen] // an array here would escape to the heap: r is an interface
	if n, err := io.ReadFull(r, pre); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, fmt.Errorf("frame of %d bytes is shorter than the %d-byte prefix", n, PrefixLen)
		}
		return Frame{}, err
	}
	t, h, err := checkPrefix(pre)
	if err != nil {
		return Frame{}, err
	}
	if cap(buf) < int(h) {
		buf = make([]byte, h)
	}
	buf = buf[:h]
	if n, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, fmt.Errorf("%s header length %d exceeds the %d bytes left in the frame", t, h, n)
		}
		return Frame{}, err
	}
	return Frame{Type: t, Header: buf}, nil
}

// ReadTensor reads the rest of r, a frame's payload, straight into dst: it
// must hold exactly len(dst) float32 values. Values are not checked; the
// caller validates them (allreduce.Accumulator.Add does, in its one pass).
// An empty payload reads nothing and reports (0, nil) so the caller can
// tell a frame without a tensor.
func ReadTensor(r io.Reader, dst []float32) (int, error) {
	n, err := readTensor(r, dst, false)
	if err != nil {
		if se := (*SizeError)(nil); errors.As(err, &se) && se.Got == 0 {
			return 0, nil // a frame without a tensor
		}
	}
	return n, err
}

// ReadFiniteTensor is ReadTensor for a frame that must carry the tensor:
// an empty payload is a SizeError like any other wrong size. It also checks
// the values, as CheckFinite does, and fails at the first NaN or infinity.
// It checks each piece as the connection delivers it, while the piece is
// still in cache and while the sender is still writing the next: on
// loopback that hides most of the check's cost, which a separate pass over
// the whole tensor afterwards adds in full. The error of a bad value names
// its index; it is returned at once, with the rest of the payload unread
// and the count of the bytes read so far (unlike a SizeError, after which
// the frame has been read whole). A payload too short or too long may also
// be reported as its first bad value rather than as a SizeError.
func ReadFiniteTensor(r io.Reader, dst []float32) (int, error) {
	return readTensor(r, dst, true)
}

func readTensor(r io.Reader, dst []float32, check bool) (int, error) {
	want := 4 * len(dst)
	b := Float32Bytes(dst)
	if !littleEndian {
		b = make([]byte, want)
	}
	n, checked := 0, 0 // bytes read, values checked
	var err error
	for n < want && err == nil {
		var k int
		k, err = r.Read(b[n:])
		n += k
		if check && littleEndian && n/4 > checked {
			if cerr := checkFiniteAt(dst[checked:n/4], checked); cerr != nil {
				return n, cerr
			}
			checked = n / 4
		}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return n, err
	}
	if n < want {
		return n, &SizeError{Got: int64(n), Want: int64(want)}
	}
	if extra, err := io.Copy(io.Discard, r); err != nil {
		return n, err
	} else if extra > 0 {
		return n + int(extra), &SizeError{Got: int64(n) + extra, Want: int64(want)}
	}
	if !littleEndian {
		decodeLE(dst, b)
		if check {
			return n, CheckFinite(dst)
		}
	}
	return n, nil
}

// CheckFinite reports the first NaN or infinite value of v. It tests the
// exponent bits without branches, so it runs at memory speed, and only
// looks for the index once it knows there is a bad value.
func CheckFinite(v []float32) error { return checkFiniteAt(v, 0) }

// checkFiniteAt is CheckFinite for the values of a tensor from index
// offset on.
func checkFiniteAt(v []float32, offset int) error {
	if allFinite(v) {
		return nil
	}
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("tensor value %d is %v; all values must be finite", offset+i, x)
		}
	}
	return nil
}

// allFiniteGo reports whether no value of v is NaN or infinite, in Go
// (allFinite uses it where there is no AVX2 kernel, and for the values
// after the kernel's last block). The exponent is all ones exactly for
// those; masking everything else and adding one exponent step then carries
// into the sign bit. Two values are tested per 64-bit word (neither half's
// sum can carry into the other: each is at most 0x80000000, and which half
// holds which value does not matter), four words per iteration with
// independent accumulators: several times faster than one value at a time.
func allFiniteGo(v []float32) bool {
	const (
		exp  = 0x7f800000_7f800000
		step = 0x00800000_00800000
		sign = 0x80000000_80000000
	)
	var b0, b1, b2, b3 uint64
	one := func(x float32) { b0 |= uint64(math.Float32bits(x)&0x7f800000 + 0x00800000) }
	if len(v) > 0 && uintptr(unsafe.Pointer(&v[0]))%8 != 0 {
		one(v[0]) // align the words
		v = v[1:]
	}
	var w []uint64
	if len(v) >= 2 { // a *uint64 to fewer than 8 bytes would be invalid
		w = unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(v))), len(v)/2)
	}
	for ; len(w) >= 4; w = w[4:] {
		b0 |= w[0]&exp + step
		b1 |= w[1]&exp + step
		b2 |= w[2]&exp + step
		b3 |= w[3]&exp + step
	}
	for _, x := range w {
		b0 |= x&exp + step
	}
	if len(v)%2 == 1 {
		one(v[len(v)-1])
	}
	return (b0|b1|b2|b3)&sign == 0
}

// ExpectEnd checks that a frame of type t has no payload left in r.
func ExpectEnd(r io.Reader, t Type) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%s frame carries %d payload bytes; it has none", t, n)
	}
	return nil
}

// SizeError is a tensor payload of the wrong length: the frame was read
// whole, and the peer may go on.
type SizeError struct{ Got, Want int64 }

func (e *SizeError) Error() string {
	return fmt.Sprintf("tensor payload of %d bytes, want %d (%d float32 values)", e.Got, e.Want, e.Want/4)
}
