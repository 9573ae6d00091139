package data

import (
	"encoding/binary"
	"testing"
)

// fbWriter lays out hand-made FlatBuffers for verifier tests. Every table
// field is a 4-byte slot; offsets are patched in once their target exists.
type fbWriter struct{ b []byte }

func (w *fbWriter) pos() int64 { return int64(len(w.b)) }

func (w *fbWriter) u16(v uint16) { w.b = binary.LittleEndian.AppendUint16(w.b, v) }
func (w *fbWriter) u32(v uint32) { w.b = binary.LittleEndian.AppendUint32(w.b, v) }

// table writes a vtable and a table of slots 4-byte fields, of which those in
// present are marked present, and returns the table position and the
// position of each slot.
func (w *fbWriter) table(slots int, present ...int) (int64, []int64) {
	vt := w.pos()
	w.u16(uint16(4 + 2*slots))
	w.u16(uint16(4 + 4*slots))
	for i := range slots {
		off := uint16(0)
		for _, p := range present {
			if p == i {
				off = uint16(4 + 4*i)
			}
		}
		w.u16(off)
	}
	t := w.pos()
	w.u32(uint32(t - vt))
	at := make([]int64, slots)
	for i := range at {
		at[i] = w.pos()
		w.u32(0)
	}
	return t, at
}

// point stores at slot the forward offset to target.
func (w *fbWriter) point(slot, target int64) {
	binary.LittleEndian.PutUint32(w.b[slot:], uint32(target-slot))
}

// set stores a raw value in a slot.
func (w *fbWriter) set(slot int64, v uint32) { binary.LittleEndian.PutUint32(w.b[slot:], v) }

// vector writes a vector of n offset slots and returns its position and the
// slots' positions.
func (w *fbWriter) vector(n int) (int64, []int64) {
	p := w.pos()
	w.u32(uint32(n))
	at := make([]int64, n)
	for i := range at {
		at[i] = w.pos()
		w.u32(0)
	}
	return p, at
}

// schemaChain builds a Message whose schema has one field nested depth
// levels deep, every level's children vector holding fanout references to
// the same next-level field.
func schemaChain(depth, fanout int) []byte {
	w := &fbWriter{}
	w.u32(0) // root offset
	msg, ms := w.table(3, 1, 2)
	w.point(0, msg)
	w.set(ms[1], fbHeaderSchema)
	sch, ss := w.table(2, 1)
	w.point(ms[2], sch)
	vec, vs := w.vector(1)
	w.point(ss[1], vec)
	refs := vs
	for level := 0; level < depth; level++ {
		last := level == depth-1
		var f int64
		var fs []int64
		if last {
			f, _ = w.table(6)
		} else {
			f, fs = w.table(6, 5)
		}
		for _, r := range refs {
			w.point(r, f)
		}
		if !last {
			kids, ks := w.vector(fanout)
			w.point(fs[5], kids)
			refs = ks
		}
	}
	return w.b
}

func TestCheckMessageHandMade(t *testing.T) {
	tests := []struct {
		name          string
		depth, fanout int
		want          string
	}{
		{"shallow chain", 5, 1, ""},
		{"nesting too deep", 40, 1, "fields nest deeper than 32 levels"},
		{"exponential sharing", 30, 4, "visits more bytes than it holds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := checkMessage(schemaChain(tc.depth, tc.fanout))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if m.header != fbHeaderSchema {
					t.Fatalf("header %d, expected %d", m.header, fbHeaderSchema)
				}
				return
			}
			wantErr(t, err, tc.want)
		})
	}
}

func TestCheckMessageBounds(t *testing.T) {
	good := schemaChain(3, 2)
	if _, err := checkMessage(good); err != nil {
		t.Fatal(err)
	}
	// Every truncation of a valid message and every single-byte corruption
	// of its first bytes is either accepted or rejected; none may panic.
	for n := range len(good) {
		checkMessage(good[:n])
	}
	for i := range len(good) {
		for _, v := range []byte{0, 1, 0x7f, 0x80, 0xff} {
			bad := append([]byte{}, good...)
			bad[i] = v
			checkMessage(bad)
		}
	}
}

// zstdFrame assembles a ZSTD frame from a header descriptor, the header
// bytes that follow it, and blocks given as (header, payload) pairs.
func zstdFrame(fhd byte, hdr []byte, blocks ...[]byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, zstdMagic)
	b = append(b, fhd)
	b = append(b, hdr...)
	for _, blk := range blocks {
		b = append(b, blk...)
	}
	return b
}

// zstdBlock encodes a block header (last flag, type, size) and payload.
func zstdBlock(last bool, typ, size uint32, payload ...byte) []byte {
	h := size<<3 | typ<<1
	if last {
		h |= 1
	}
	return append([]byte{byte(h), byte(h >> 8), byte(h >> 16)}, payload...)
}

func TestCheckZstdFrame(t *testing.T) {
	const single, checksum = 0x20, 0x04
	rle := zstdBlock(true, 1, 100, 'x')         // 100 × 'x'
	raw := zstdBlock(true, 0, 3, 'a', 'b', 'c') // "abc"
	tests := []struct {
		name string
		data []byte
		size int64
		want string
	}{
		{"single segment RLE", zstdFrame(single, []byte{100}, rle), 100, ""},
		{"windowed raw with checksum", zstdFrame(checksum, []byte{0x00}, raw, []byte{1, 2, 3, 4}), 3, ""},
		{"8 MiB window on a small buffer", zstdFrame(0, []byte{0x68}, raw), 3, ""},
		{"content larger than buffer", zstdFrame(single, []byte{200}, rle), 100, "content size 200 exceeds the buffer's uncompressed length 100"},
		{"8-byte content size", zstdFrame(single|0xc0, []byte{0, 0, 0, 0, 0, 0, 0, 0x10}, rle), 100, "content size 1152921504606846976 exceeds"},
		{"window too large", zstdFrame(0, []byte{0x78}, raw), 3, "window of 33554432 bytes exceeds 8388608"},
		{"window allowed by size", zstdFrame(0, []byte{0x78}, raw), 20 << 20, ""},
		{"reserved bit", zstdFrame(0x08, []byte{0}, raw), 3, "reserved bit"},
		{"bad magic", append([]byte{1, 2, 3, 4, 5}, raw...), 3, "expected a ZSTD frame"},
		{"reserved block type", zstdFrame(0, []byte{0}, zstdBlock(true, 3, 0)), 3, "reserved block type"},
		{"truncated block", zstdFrame(0, []byte{0}, zstdBlock(true, 0, 10, 'a')), 10, "truncated"},
		{"missing last block", zstdFrame(0, []byte{0}, zstdBlock(false, 0, 1, 'a')), 3, "truncated"},
		{"missing checksum", zstdFrame(checksum, []byte{0}, raw), 3, "truncated"},
		{"two frames", append(zstdFrame(single, []byte{100}, rle), zstdFrame(single, []byte{100}, rle)...), 200, "expected one ZSTD frame, got"},
		{"empty", nil, 0, "truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkZstdFrame(tc.data, tc.size)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, tc.want)
		})
	}
}
