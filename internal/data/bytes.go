package data

import "unsafe"

// float32Bytes is the memory of x as bytes, without a copy, with x's
// capacity.
func float32Bytes(x []float32) []byte {
	if cap(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[:1][0])), 4*cap(x))[:4*len(x)]
}

// int32Bytes is the memory of x as bytes, without a copy, with x's
// capacity.
func int32Bytes(x []int32) []byte {
	if cap(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[:1][0])), 4*cap(x))[:4*len(x)]
}

// swap32 reverses the bytes of each 4-byte value in b: a stream's data in
// the other byte order to this machine's.
func swap32(b []byte) {
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
}
