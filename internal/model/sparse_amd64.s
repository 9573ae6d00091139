//go:build amd64 && !purego

#include "textflag.h"

// LOAD8 and STORE8 move accSegsAVX2's eight accumulators Y0–Y7 from and
// to the output block at DI; TERMS8 adds Y8 (the broadcast value) times the
// 64 lanes of the matrix row at AX to them, each product rounded before it
// is added, with Y11–Y15 for the products.
#define LOAD8 \
	VMOVUPS 0(DI), Y0; \
	VMOVUPS 32(DI), Y1; \
	VMOVUPS 64(DI), Y2; \
	VMOVUPS 96(DI), Y3; \
	VMOVUPS 128(DI), Y4; \
	VMOVUPS 160(DI), Y5; \
	VMOVUPS 192(DI), Y6; \
	VMOVUPS 224(DI), Y7

#define STORE8 \
	VMOVUPS Y0, 0(DI); \
	VMOVUPS Y1, 32(DI); \
	VMOVUPS Y2, 64(DI); \
	VMOVUPS Y3, 96(DI); \
	VMOVUPS Y4, 128(DI); \
	VMOVUPS Y5, 160(DI); \
	VMOVUPS Y6, 192(DI); \
	VMOVUPS Y7, 224(DI)

#define TERMS8 \
	VMULPS 0(AX), Y8, Y11; \
	VADDPS Y11, Y0, Y0; \
	VMULPS 32(AX), Y8, Y12; \
	VADDPS Y12, Y1, Y1; \
	VMULPS 64(AX), Y8, Y13; \
	VADDPS Y13, Y2, Y2; \
	VMULPS 96(AX), Y8, Y14; \
	VADDPS Y14, Y3, Y3; \
	VMULPS 128(AX), Y8, Y15; \
	VADDPS Y15, Y4, Y4; \
	VMULPS 160(AX), Y8, Y11; \
	VADDPS Y11, Y5, Y5; \
	VMULPS 192(AX), Y8, Y12; \
	VADDPS Y12, Y6, Y6; \
	VMULPS 224(AX), Y8, Y13; \
	VADDPS Y13, Y7, Y7

// func accSegsAVX2(out *float32, ldOut, n int, ends *int32, nseg int, vals *float32, idx *int32, m *float32, ldM int, mask *int32)
//
// For segment s = 0..nseg-1 (entries k = ends[s-1]..ends[s]-1, ends[-1] = 0)
// and i < n: out[s*ldOut+i] += vals[k] * m[idx[k]*ldM+i], k in increasing
// order. The output row is cut into blocks of 8 vectors (64 lanes), then at
// most one block of 4, then the last n%32 lanes as one block of up to four
// masked vectors (mask holds 32 int32 lanes, -1 for i < n%32). Each block is
// held in registers while k runs over the segment, and every term is a
// VMULPS followed by a VADDPS (never an FMA), so the result matches plain Go
// bit for bit. When at most 8 lanes follow the blocks of 8 (n = 200: three
// blocks and 8 lanes), the last block of 8 takes them along as a ninth,
// masked vector (b9): a masked block of its own ran one chain of dependent
// adds, and cost two thirds of a block of 64 lanes for its 8.
//
// Registers: DI output block, SI vals, DX idx, R8 ends, R9 m plus the block
// offset, R10 ldM in bytes, R11 first entry of the segment, R13 end of the
// segment, R12 segment number, BX entry k, AX row address, CX block count,
// R14 whether b9 is taken. Y0-Y7 accumulators, Y8 broadcast value, Y9-Y15
// products or masks (in b9, Y9 the ninth accumulator and Y10 its mask).
TEXT ·accSegsAVX2(SB), NOSPLIT, $0-80
	MOVQ vals+40(FP), SI
	MOVQ idx+48(FP), DX
	MOVQ ends+24(FP), R8
	MOVQ ldM+64(FP), R10
	SHLQ $2, R10
	XORQ R11, R11
	XORQ R12, R12

	// R14 = 1 when the last block of 8 takes the masked lanes along (b9):
	// a block of 4 does not follow, and at most 8 lanes are left.
	XORQ R14, R14
	MOVQ n+16(FP), AX
	CMPQ AX, $64
	JL   seg
	MOVQ AX, BX
	ANDQ $63, BX
	JZ   seg
	CMPQ BX, $8
	JG   seg
	MOVQ $1, R14

seg:
	CMPQ R12, nseg+32(FP)
	JGE done
	MOVLQSX (R8)(R12*4), R13
	CMPQ R13, R11
	JLE next
	MOVQ R12, DI
	IMULQ ldOut+8(FP), DI
	SHLQ $2, DI
	ADDQ out+0(FP), DI
	MOVQ m+56(FP), R9
	MOVQ n+16(FP), CX
	SHRQ $6, CX

b8:
	TESTQ CX, CX
	JZ b4test
	CMPQ CX, $1
	JNE  b8go
	TESTQ R14, R14
	JNZ  b9

b8go:
	LOAD8
	MOVQ R11, BX
b8k:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ R9, AX
	VBROADCASTSS (SI)(BX*4), Y8
	TERMS8
	INCQ BX
	CMPQ BX, R13
	JL b8k
	STORE8
	ADDQ $256, DI
	ADDQ $256, R9
	DECQ CX
	JMP b8

b4test:
	MOVQ n+16(FP), CX
	ANDQ $32, CX
	JZ mtest
b4:
	VMOVUPS 0(DI), Y0
	VMOVUPS 32(DI), Y1
	VMOVUPS 64(DI), Y2
	VMOVUPS 96(DI), Y3
	MOVQ R11, BX
b4k:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ R9, AX
	VBROADCASTSS (SI)(BX*4), Y8
	VMULPS 0(AX), Y8, Y9
	VADDPS Y9, Y0, Y0
	VMULPS 32(AX), Y8, Y10
	VADDPS Y10, Y1, Y1
	VMULPS 64(AX), Y8, Y11
	VADDPS Y11, Y2, Y2
	VMULPS 96(AX), Y8, Y12
	VADDPS Y12, Y3, Y3
	INCQ BX
	CMPQ BX, R13
	JL b4k
	VMOVUPS Y0, 0(DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	ADDQ $128, DI
	ADDQ $128, R9

mtest:
	MOVQ n+16(FP), CX
	ANDQ $31, CX
	JZ next
	MOVQ mask+72(FP), AX
	CMPQ CX, $8
	JG m4
	VMOVDQU (AX), Y12
	VMASKMOVPS (DI), Y12, Y0
	MOVQ R11, BX
m1k:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ R9, AX
	VBROADCASTSS (SI)(BX*4), Y8
	VMASKMOVPS (AX), Y12, Y9
	VMULPS Y9, Y8, Y9
	VADDPS Y9, Y0, Y0
	INCQ BX
	CMPQ BX, R13
	JL m1k
	VMASKMOVPS Y0, Y12, (DI)
	JMP next

m4:
	VMOVDQU 0(AX), Y12
	VMOVDQU 32(AX), Y13
	VMOVDQU 64(AX), Y14
	VMOVDQU 96(AX), Y15
	VMASKMOVPS 0(DI), Y12, Y0
	VMASKMOVPS 32(DI), Y13, Y1
	VMASKMOVPS 64(DI), Y14, Y2
	VMASKMOVPS 96(DI), Y15, Y3
	MOVQ R11, BX
m4k:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ R9, AX
	VBROADCASTSS (SI)(BX*4), Y8
	VMASKMOVPS 0(AX), Y12, Y4
	VMULPS Y4, Y8, Y4
	VADDPS Y4, Y0, Y0
	VMASKMOVPS 32(AX), Y13, Y5
	VMULPS Y5, Y8, Y5
	VADDPS Y5, Y1, Y1
	VMASKMOVPS 64(AX), Y14, Y6
	VMULPS Y6, Y8, Y6
	VADDPS Y6, Y2, Y2
	VMASKMOVPS 96(AX), Y15, Y7
	VMULPS Y7, Y8, Y7
	VADDPS Y7, Y3, Y3
	INCQ BX
	CMPQ BX, R13
	JL m4k
	VMASKMOVPS Y0, Y12, 0(DI)
	VMASKMOVPS Y1, Y13, 32(DI)
	VMASKMOVPS Y2, Y14, 64(DI)
	VMASKMOVPS Y3, Y15, 96(DI)

	JMP next

	// The last block of 8 vectors and the masked lanes after it, in one
	// pass over the segment: the masked vector's sum is a ninth chain, not
	// a loop of its own whose single chain waits on each add.
b9:
	MOVQ mask+72(FP), AX
	VMOVDQU (AX), Y10
	LOAD8
	VMASKMOVPS 256(DI), Y10, Y9
	MOVQ R11, BX
b9k:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ R9, AX
	VBROADCASTSS (SI)(BX*4), Y8
	TERMS8
	VMASKMOVPS 256(AX), Y10, Y14
	VMULPS Y14, Y8, Y14
	VADDPS Y14, Y9, Y9
	INCQ BX
	CMPQ BX, R13
	JL b9k
	STORE8
	VMASKMOVPS Y9, Y10, 256(DI)

next:
	MOVQ R13, R11
	INCQ R12
	JMP seg

done:
	VZEROUPPER
	RET

// func compactAVX2(idx *int32, val *float32, src *float32, nblk int, perm *[256][8]uint8, next *float32, cnt *int32) (count int)
//
// Stores the non-zero entries among the 8*nblk floats at src (NaNs count as
// non-zero, like v != 0 in Go) at val[0:count], and their positions at
// idx[0:count], in order. Each block of eight is compared with zero, its
// mask selects a permutation that moves the non-zero lanes to the front,
// and all eight lanes of values and positions are stored at the current
// count: the caller provides room for eight more entries than it keeps.
// Meanwhile it prefetches the 32*nblk bytes at next, the row the caller
// will compact next (rows of a shuffled dataset come from all over memory),
// and adds one to cnt[j] for every non-zero src[j].
//
// Registers: DI idx, SI val, DX src, CX blocks left, R8 perm, AX count,
// BX mask, R9 popcount. Y0 input, Y1 zero then compare mask, Y2 lane
// permutation, Y3 positions of the current block, Y4 8 in every lane,
// Y5 permuted positions, Y6 permuted values, Y7 non-zero lanes (all ones),
// Y8 counts, R10 next, R11 cnt.
TEXT ·compactAVX2(SB), NOSPLIT, $0-64
	MOVQ idx+0(FP), DI
	MOVQ val+8(FP), SI
	MOVQ src+16(FP), DX
	MOVQ nblk+24(FP), CX
	MOVQ perm+32(FP), R8
	MOVQ next+40(FP), R10
	MOVQ cnt+48(FP), R11
	XORQ AX, AX
	MOVQ $8, R9
	MOVQ R9, X4
	VPBROADCASTD X4, Y4
	MOVQ $0x0706050403020100, R9
	MOVQ R9, X3
	VPMOVZXBD X3, Y3
	VXORPS Y1, Y1, Y1
	TESTQ CX, CX
	JZ cdone

cloop:
	PREFETCHT0 (R10)
	VMOVUPS (DX), Y0
	VCMPPS $4, Y1, Y0, Y7
	VMOVDQU (R11), Y8
	VPSUBD Y7, Y8, Y8
	VMOVDQU Y8, (R11)
	VMOVMSKPS Y7, BX
	POPCNTL BX, R9
	VPMOVZXBD (R8)(BX*8), Y2
	VPERMPS Y0, Y2, Y6
	VPERMD Y3, Y2, Y5
	VMOVUPS Y6, (SI)(AX*4)
	VMOVDQU Y5, (DI)(AX*4)
	ADDQ R9, AX
	VPADDD Y4, Y3, Y3
	ADDQ $32, DX
	ADDQ $32, R10
	ADDQ $32, R11
	DECQ CX
	JNZ cloop

cdone:
	MOVQ AX, count+56(FP)
	VZEROUPPER
	RET

// dotsum reduces the eight lanes of accumulator Y (X its low half) as
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) and stores the sum at off(base).
// It uses X13-X15.
#define dotsum(Y, X, off, base) \
	VEXTRACTF128 $1, Y, X13; \
	VADDPS       X13, X, X;  \
	VMOVHLPS     X, X, X14;  \
	VADDPS       X14, X, X;  \
	VMOVSHDUP    X, X15;     \
	VADDSS       X15, X, X;  \
	VMOVSS       X, off(base)

// func dotsAVX2(out *float32, a *float32, w *float32, ldw, nout, nvec int)
//
// For o < nout: out[o] = the dot product of the first 8*nvec elements of a
// and of row o of w (ldw elements apart), summed in eight lanes (lane l
// takes elements l, l+8, l+16, ... in order, each product rounded before it
// is added) and then across lanes as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)),
// the order dotGo reproduces. Outputs go four at a time (one accumulator
// each, a loaded once per step), then one at a time.
//
// Registers: DI out, SI a, DX row of the current output, R8 ldw in bytes,
// CX outputs left, R9 nvec, BX vectors left, AX byte offset in the rows,
// R10-R12 the next three rows. Y0-Y3 accumulators, Y8 a, Y9-Y12 products,
// X13-X15 reduction.
TEXT ·dotsAVX2(SB), NOSPLIT, $0-48
	MOVQ out+0(FP), DI
	MOVQ a+8(FP), SI
	MOVQ w+16(FP), DX
	MOVQ ldw+24(FP), R8
	SHLQ $2, R8
	MOVQ nout+32(FP), CX
	MOVQ nvec+40(FP), R9

d4:
	CMPQ CX, $4
	JL d1
	LEAQ (DX)(R8*1), R10
	LEAQ (R10)(R8*1), R11
	LEAQ (R11)(R8*1), R12
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ AX, AX
	MOVQ R9, BX
	TESTQ BX, BX
	JZ d4red

d4k:
	VMOVUPS (SI)(AX*1), Y8
	VMULPS (DX)(AX*1), Y8, Y9
	VADDPS Y9, Y0, Y0
	VMULPS (R10)(AX*1), Y8, Y10
	VADDPS Y10, Y1, Y1
	VMULPS (R11)(AX*1), Y8, Y11
	VADDPS Y11, Y2, Y2
	VMULPS (R12)(AX*1), Y8, Y12
	VADDPS Y12, Y3, Y3
	ADDQ $32, AX
	DECQ BX
	JNZ d4k

d4red:
	dotsum(Y0, X0, 0, DI)
	dotsum(Y1, X1, 4, DI)
	dotsum(Y2, X2, 8, DI)
	dotsum(Y3, X3, 12, DI)
	ADDQ $16, DI
	LEAQ (R12)(R8*1), DX
	SUBQ $4, CX
	JMP d4

d1:
	TESTQ CX, CX
	JZ ddone
	VXORPS Y0, Y0, Y0
	XORQ AX, AX
	MOVQ R9, BX
	TESTQ BX, BX
	JZ d1red

d1k:
	VMOVUPS (SI)(AX*1), Y8
	VMULPS (DX)(AX*1), Y8, Y9
	VADDPS Y9, Y0, Y0
	ADDQ $32, AX
	DECQ BX
	JNZ d1k

d1red:
	dotsum(Y0, X0, 0, DI)
	ADDQ $4, DI
	ADDQ R8, DX
	DECQ CX
	JMP d1

ddone:
	VZEROUPPER
	RET

// func scatterSegsAVX2(out *float32, ldOut, n int, ends *int32, nseg int, vals *float32, alpha float32, idx *int32, src *float32, ldSrc int)
//
// For segment s = 0..nseg-1 (entries k = ends[s-1]..ends[s]-1, ends[-1] = 0)
// and i < n: out[idx[k]*ldOut+i] += (alpha*vals[k]) * src[s*ldSrc+i], each
// product rounded before it is added, segments in order. The source row is
// held in registers 64 lanes (8 vectors) at a time, then 8 lanes at a time,
// and the last n%8 lanes go one by one; every entry of the segment loads,
// updates and stores its output row. The same operations as accSegs over
// the transposed entries, in the same order per output element.
//
// Registers: SI vals, DX idx, R8 ends, R9 source block, R10 ldOut in bytes,
// R11 first entry of the segment, R13 end of the segment, R12 segment,
// BX entry k, AX output address, CX blocks or lanes left, DI byte offset of
// the block in a row. Y0-Y7 source block, Y8 alpha*vals[k], Y9-Y15 sums,
// X14 alpha.
TEXT ·scatterSegsAVX2(SB), NOSPLIT, $0-80
	MOVQ vals+40(FP), SI
	MOVQ idx+56(FP), DX
	MOVQ ends+24(FP), R8
	MOVQ ldOut+8(FP), R10
	SHLQ $2, R10
	VMOVSS alpha+48(FP), X14
	XORQ R11, R11
	XORQ R12, R12

sseg:
	CMPQ R12, nseg+32(FP)
	JGE sdone
	MOVLQSX (R8)(R12*4), R13
	CMPQ R13, R11
	JLE snext
	MOVQ R12, R9
	IMULQ ldSrc+72(FP), R9
	SHLQ $2, R9
	ADDQ src+64(FP), R9
	XORQ DI, DI
	MOVQ n+16(FP), CX
	SHRQ $6, CX

s8:
	TESTQ CX, CX
	JZ s1pre

	VMOVUPS 0(R9), Y0
	VMOVUPS 32(R9), Y1
	VMOVUPS 64(R9), Y2
	VMOVUPS 96(R9), Y3
	VMOVUPS 128(R9), Y4
	VMOVUPS 160(R9), Y5
	VMOVUPS 192(R9), Y6
	VMOVUPS 224(R9), Y7
	MOVQ R11, BX
s8k:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ out+0(FP), AX
	ADDQ DI, AX
	VMULSS (SI)(BX*4), X14, X8
	VBROADCASTSS X8, Y8
	VMULPS Y0, Y8, Y9
	VADDPS 0(AX), Y9, Y9
	VMOVUPS Y9, 0(AX)
	VMULPS Y1, Y8, Y10
	VADDPS 32(AX), Y10, Y10
	VMOVUPS Y10, 32(AX)
	VMULPS Y2, Y8, Y11
	VADDPS 64(AX), Y11, Y11
	VMOVUPS Y11, 64(AX)
	VMULPS Y3, Y8, Y12
	VADDPS 96(AX), Y12, Y12
	VMOVUPS Y12, 96(AX)
	VMULPS Y4, Y8, Y13
	VADDPS 128(AX), Y13, Y13
	VMOVUPS Y13, 128(AX)
	VMULPS Y5, Y8, Y9
	VADDPS 160(AX), Y9, Y9
	VMOVUPS Y9, 160(AX)
	VMULPS Y6, Y8, Y10
	VADDPS 192(AX), Y10, Y10
	VMOVUPS Y10, 192(AX)
	VMULPS Y7, Y8, Y11
	VADDPS 224(AX), Y11, Y11
	VMOVUPS Y11, 224(AX)
	INCQ BX
	CMPQ BX, R13
	JL s8k
	ADDQ $256, DI
	ADDQ $256, R9
	DECQ CX
	JMP s8

s1pre:
	MOVQ n+16(FP), CX
	ANDQ $63, CX
	SHRQ $3, CX

s1:
	TESTQ CX, CX
	JZ sscalar
	VMOVUPS (R9), Y0
	MOVQ R11, BX

s1k:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ out+0(FP), AX
	ADDQ DI, AX
	VMULSS (SI)(BX*4), X14, X8
	VBROADCASTSS X8, Y8
	VMULPS Y0, Y8, Y9
	VADDPS (AX), Y9, Y9
	VMOVUPS Y9, (AX)
	INCQ BX
	CMPQ BX, R13
	JL s1k
	ADDQ $32, DI
	ADDQ $32, R9
	DECQ CX
	JMP s1

sscalar:
	MOVQ n+16(FP), CX
	ANDQ $7, CX

slane:
	TESTQ CX, CX
	JZ snext
	VMOVSS (R9), X0
	MOVQ R11, BX

slanek:
	MOVLQSX (DX)(BX*4), AX
	IMULQ R10, AX
	ADDQ out+0(FP), AX
	ADDQ DI, AX
	VMULSS (SI)(BX*4), X14, X8
	VMULSS X0, X8, X9
	VADDSS (AX), X9, X9
	VMOVSS X9, (AX)
	INCQ BX
	CMPQ BX, R13
	JL slanek
	ADDQ $4, DI
	ADDQ $4, R9
	DECQ CX
	JMP slane

snext:
	MOVQ R13, R11
	INCQ R12
	JMP sseg

sdone:
	VZEROUPPER
	RET

// func transposeAVX2(dst *float32, ldd int, src *float32, lds int, nr, nc int)
//
// Transposes nr×nc tiles of 8×8 values: the tile at rows 8i..8i+7 and
// columns 8j..8j+7 of src (lds values a row) goes to rows 8j..8j+7 and
// columns 8i..8i+7 of dst (ldd values a row). nr and nc are at least 1.
// Each tile is eight loads, 24 shuffles and eight stores: unpack pairs of
// rows, shuffle pairs of those into 4×4 transposes within each 128-bit
// lane, then swap the lanes' halves.
TEXT ·transposeAVX2(SB), NOSPLIT, $0-48
	MOVQ dst+0(FP), DI
	MOVQ ldd+8(FP), R8
	SHLQ $2, R8          // dst row, bytes
	LEAQ (R8)(R8*2), R14 // 3 dst rows
	MOVQ src+16(FP), SI
	MOVQ lds+24(FP), R9
	SHLQ $2, R9          // src row, bytes
	LEAQ (R9)(R9*2), R13 // 3 src rows
	MOVQ nr+32(FP), R10
	MOVQ nc+40(FP), R11

trow:
	MOVQ SI, AX  // this tile in src
	MOVQ DI, CX  // and in dst
	MOVQ R11, R12

ttile:
	LEAQ (AX)(R9*4), BX
	VMOVUPS (AX), Y0
	VMOVUPS (AX)(R9*1), Y1
	VMOVUPS (AX)(R9*2), Y2
	VMOVUPS (AX)(R13*1), Y3
	VMOVUPS (BX), Y4
	VMOVUPS (BX)(R9*1), Y5
	VMOVUPS (BX)(R9*2), Y6
	VMOVUPS (BX)(R13*1), Y7

	// Interleave rows 2k and 2k+1: lane halves hold (a0 b0 a1 b1), (a2 b2 a3 b3).
	VUNPCKLPS Y1, Y0, Y8
	VUNPCKHPS Y1, Y0, Y9
	VUNPCKLPS Y3, Y2, Y10
	VUNPCKHPS Y3, Y2, Y11
	VUNPCKLPS Y5, Y4, Y12
	VUNPCKHPS Y5, Y4, Y13
	VUNPCKLPS Y7, Y6, Y14
	VUNPCKHPS Y7, Y6, Y15

	// Pair those up: each 128-bit lane now holds one column of four rows.
	VSHUFPS $0x44, Y10, Y8, Y0
	VSHUFPS $0xEE, Y10, Y8, Y1
	VSHUFPS $0x44, Y11, Y9, Y2
	VSHUFPS $0xEE, Y11, Y9, Y3
	VSHUFPS $0x44, Y14, Y12, Y4
	VSHUFPS $0xEE, Y14, Y12, Y5
	VSHUFPS $0x44, Y15, Y13, Y6
	VSHUFPS $0xEE, Y15, Y13, Y7

	// Rows 0–3 of a column are in Y0–Y3, rows 4–7 in Y4–Y7: join the low
	// lanes (columns 0–3) and the high lanes (columns 4–7).
	VPERM2F128 $0x20, Y4, Y0, Y8
	VPERM2F128 $0x20, Y5, Y1, Y9
	VPERM2F128 $0x20, Y6, Y2, Y10
	VPERM2F128 $0x20, Y7, Y3, Y11
	VPERM2F128 $0x31, Y4, Y0, Y12
	VPERM2F128 $0x31, Y5, Y1, Y13
	VPERM2F128 $0x31, Y6, Y2, Y14
	VPERM2F128 $0x31, Y7, Y3, Y15

	LEAQ (CX)(R8*4), DX
	VMOVUPS Y8, (CX)
	VMOVUPS Y9, (CX)(R8*1)
	VMOVUPS Y10, (CX)(R8*2)
	VMOVUPS Y11, (CX)(R14*1)
	VMOVUPS Y12, (DX)
	VMOVUPS Y13, (DX)(R8*1)
	VMOVUPS Y14, (DX)(R8*2)
	VMOVUPS Y15, (DX)(R14*1)

	ADDQ $32, AX        // the next tile: 8 columns on in src
	LEAQ (CX)(R8*8), CX // and 8 rows on in dst
	DECQ R12
	JNZ  ttile

	LEAQ (SI)(R9*8), SI // 8 rows on in src
	ADDQ $32, DI        // 8 columns on in dst
	DECQ R10
	JNZ  trow

	VZEROUPPER
	RET

// func dots2AVX2(out0, out1, a0, a1, w *float32, ldw, nout, nvec int)
//
// dotsAVX2 for two vectors at once: out0[o] and out1[o] are the dot
// products of a0 and a1 with row o of w, each summed exactly as dotsAVX2
// sums it, so the results are bit for bit dotsAVX2's (each product has the
// element of a as its first operand, as there: with two NaNs, x86 returns
// the first one's payload). Each vector of a row
// of w is loaded once for both products; with eight independent sums (four
// outputs of two rows) the loop is bound by the multiplies and adds rather
// than by the latency of each sum's adds, as dotsAVX2's four are.
//
// Registers: DI out0, R13 out1, SI a0, R14 a1, DX row of the current
// output, R8 ldw in bytes, CX outputs left, R9 nvec, BX vectors left, AX
// byte offset in the rows, R10-R12 the next three rows. Y0-Y3 sums for a0,
// Y4-Y7 for a1, Y8 a0, Y9 a1, Y10 w, Y11-Y12 products, X13-X15 reduction.
TEXT ·dots2AVX2(SB), NOSPLIT, $0-64
	MOVQ out0+0(FP), DI
	MOVQ out1+8(FP), R13
	MOVQ a0+16(FP), SI
	MOVQ a1+24(FP), R14
	MOVQ w+32(FP), DX
	MOVQ ldw+40(FP), R8
	SHLQ $2, R8
	MOVQ nout+48(FP), CX
	MOVQ nvec+56(FP), R9

e4:
	CMPQ CX, $4
	JL   e1
	LEAQ (DX)(R8*1), R10
	LEAQ (R10)(R8*1), R11
	LEAQ (R11)(R8*1), R12
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	XORQ  AX, AX
	MOVQ  R9, BX
	TESTQ BX, BX
	JZ    e4red

e4k:
	VMOVUPS (SI)(AX*1), Y8
	VMOVUPS (R14)(AX*1), Y9
	VMOVUPS (DX)(AX*1), Y10
	VMULPS  Y10, Y8, Y11
	VADDPS  Y11, Y0, Y0
	VMULPS  Y10, Y9, Y12
	VADDPS  Y12, Y4, Y4
	VMOVUPS (R10)(AX*1), Y10
	VMULPS  Y10, Y8, Y11
	VADDPS  Y11, Y1, Y1
	VMULPS  Y10, Y9, Y12
	VADDPS  Y12, Y5, Y5
	VMOVUPS (R11)(AX*1), Y10
	VMULPS  Y10, Y8, Y11
	VADDPS  Y11, Y2, Y2
	VMULPS  Y10, Y9, Y12
	VADDPS  Y12, Y6, Y6
	VMOVUPS (R12)(AX*1), Y10
	VMULPS  Y10, Y8, Y11
	VADDPS  Y11, Y3, Y3
	VMULPS  Y10, Y9, Y12
	VADDPS  Y12, Y7, Y7
	ADDQ    $32, AX
	DECQ    BX
	JNZ     e4k

e4red:
	dotsum(Y0, X0, 0, DI)
	dotsum(Y1, X1, 4, DI)
	dotsum(Y2, X2, 8, DI)
	dotsum(Y3, X3, 12, DI)
	dotsum(Y4, X4, 0, R13)
	dotsum(Y5, X5, 4, R13)
	dotsum(Y6, X6, 8, R13)
	dotsum(Y7, X7, 12, R13)
	ADDQ $16, DI
	ADDQ $16, R13
	LEAQ (R12)(R8*1), DX
	SUBQ $4, CX
	JMP  e4

e1:
	TESTQ CX, CX
	JZ    edone
	VXORPS Y0, Y0, Y0
	VXORPS Y4, Y4, Y4
	XORQ  AX, AX
	MOVQ  R9, BX
	TESTQ BX, BX
	JZ    e1red

e1k:
	VMOVUPS (SI)(AX*1), Y8
	VMOVUPS (R14)(AX*1), Y9
	VMOVUPS (DX)(AX*1), Y10
	VMULPS  Y10, Y8, Y11
	VADDPS  Y11, Y0, Y0
	VMULPS  Y10, Y9, Y12
	VADDPS  Y12, Y4, Y4
	ADDQ    $32, AX
	DECQ    BX
	JNZ     e1k

e1red:
	dotsum(Y0, X0, 0, DI)
	dotsum(Y4, X4, 0, R13)
	ADDQ $4, DI
	ADDQ $4, R13
	ADDQ R8, DX
	DECQ CX
	JMP  e1

edone:
	VZEROUPPER
	RET
