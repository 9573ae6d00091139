//go:build amd64 && !purego

#include "textflag.h"

// FOLDARGS loads the fold kernels' arguments — lo in DI, hi in DX, x in SI,
// n in CX, f in every lane of Y15, the fast limit's bits in every lane of
// Y12 — and the constants TRY32 and SLOW32 need (uses AX).
#define FOLDARGS \
	MOVQ         lo+0(FP), DI; \
	MOVQ         hi+8(FP), DX; \
	MOVQ         x+16(FP), SI; \
	MOVQ         n+24(FP), CX; \
	VBROADCASTSD f+32(FP), Y15; \
	MOVL         fast+40(FP), AX; \
	MOVQ         AX, X12; \
	VPBROADCASTD X12, Y12; \
	BCASTD(0x7fffffff, X13, Y13); \
	MAGIC

// BCASTD puts the 32-bit constant c in every 32-bit lane of y, x being
// y's lower half (uses AX).
#define BCASTD(c, x, y) \
	MOVL         $c, AX; \
	MOVQ         AX, x; \
	VPBROADCASTD x, y

// MAGIC puts the bits of 1.5·2^52 in every 64-bit lane of Y14 (uses AX).
#define MAGIC \
	MOVQ         $0x4338000000000000, AX; \
	MOVQ         AX, X14; \
	VPBROADCASTQ X14, Y14

// RANGE puts the magnitude mask 0x7fffffff in every 32-bit lane of Y13 and
// the bits of float32(MaxAbs) in every lane of Y12 (uses AX).
#define RANGE \
	BCASTD(0x7fffffff, X13, Y13); \
	BCASTD(0x46800000, X12, Y12)

// OUT32 sets Y0 to zero when none of the 32 values at SI has magnitude bits
// beyond those in every lane of lim, nonzero otherwise, given the magnitude
// mask in Y13. The bits, compared as signed 32-bit integers, order like the
// magnitudes, and those of NaN and ±Inf exceed every finite value's: with
// the bits of MaxAbs in lim, Y0 is zero exactly when all 32 values are
// finite and within ±MaxAbs. The largest magnitude of each lane is compared
// once. It uses Y0–Y3 and leaves SI unchanged.
#define OUT32(lim) \
	VPAND    (SI), Y13, Y0; \
	VPAND    32(SI), Y13, Y1; \
	VPAND    64(SI), Y13, Y2; \
	VPAND    96(SI), Y13, Y3; \
	VPMAXSD  Y0, Y1, Y0; \
	VPMAXSD  Y2, Y3, Y2; \
	VPMAXSD  Y0, Y2, Y0; \
	VPCMPGTD lim, Y0, Y0

// TRY32 is the fold's fast path for the 32 values at SI, none of magnitude
// beyond the fast limit (fastBits), and the low halves at DI, given f in
// Y15 and the bits of 1.5·2^52 in Y14. Each term t fits in an int32: it is
// the low 32 bits of x·f + 1.5·2^52 (computed as in SLOW8; the bits of
// 1.5·2^52 end in 32 zeros), which VSHUFPS gathers from two registers into
// one, in the order 0, 1, 4, 5, 2, 3, 6, 7 that VPERMQ puts right. The new
// low halves r = lo + t (mod 2^32) go to Y8–Y11, eight values each, and are
// not stored. They are exact, and hi unchanged, unless some addition
// overflows int32, that is, unless (lo > r) differs from (t < 0) as signed
// integers: TRY32 ends with ZF set when no lane overflows, clear otherwise.
// It uses Y0–Y11 and leaves SI and DI unchanged.
#define TRY32 \
	VCVTPS2PD   (SI), Y0; \
	VCVTPS2PD   16(SI), Y1; \
	VCVTPS2PD   32(SI), Y2; \
	VCVTPS2PD   48(SI), Y3; \
	VCVTPS2PD   64(SI), Y4; \
	VCVTPS2PD   80(SI), Y5; \
	VCVTPS2PD   96(SI), Y6; \
	VCVTPS2PD   112(SI), Y7; \
	VFMADD213PD Y14, Y15, Y0; \
	VFMADD213PD Y14, Y15, Y1; \
	VFMADD213PD Y14, Y15, Y2; \
	VFMADD213PD Y14, Y15, Y3; \
	VFMADD213PD Y14, Y15, Y4; \
	VFMADD213PD Y14, Y15, Y5; \
	VFMADD213PD Y14, Y15, Y6; \
	VFMADD213PD Y14, Y15, Y7; \
	VSHUFPS     $0x88, Y1, Y0, Y0; \
	VSHUFPS     $0x88, Y3, Y2, Y2; \
	VSHUFPS     $0x88, Y5, Y4, Y4; \
	VSHUFPS     $0x88, Y7, Y6, Y6; \
	VPERMQ      $0xd8, Y0, Y0; \
	VPERMQ      $0xd8, Y2, Y2; \
	VPERMQ      $0xd8, Y4, Y4; \
	VPERMQ      $0xd8, Y6, Y6; \
	VMOVDQU     (DI), Y1; \
	VMOVDQU     32(DI), Y3; \
	VMOVDQU     64(DI), Y5; \
	VMOVDQU     96(DI), Y7; \
	VPADDD      Y1, Y0, Y8; \
	VPADDD      Y3, Y2, Y9; \
	VPADDD      Y5, Y4, Y10; \
	VPADDD      Y7, Y6, Y11; \
	VPCMPGTD    Y8, Y1, Y1; \
	VPCMPGTD    Y9, Y3, Y3; \
	VPCMPGTD    Y10, Y5, Y5; \
	VPCMPGTD    Y11, Y7, Y7; \
	VPXOR       Y0, Y1, Y1; \
	VPXOR       Y2, Y3, Y3; \
	VPXOR       Y4, Y5, Y5; \
	VPXOR       Y6, Y7, Y7; \
	VPOR        Y1, Y3, Y1; \
	VPOR        Y5, Y7, Y5; \
	VPOR        Y1, Y5, Y1; \
	VTESTPS     Y1, Y1

// STORE32 stores TRY32's low halves.
#define STORE32 \
	VMOVDQU Y8, (DI); \
	VMOVDQU Y9, 32(DI); \
	VMOVDQU Y10, 64(DI); \
	VMOVDQU Y11, 96(DI)

// SLOW32 is the fold's exact path for the 32 values at SI, whatever their
// terms: it sets the constant SLOW8 needs in Y11 (uses AX) and folds four
// groups of eight.
#define SLOW32 \
	BCASTD(0x80000000, X11, Y11); \
	SLOW8(0); \
	SLOW8(32); \
	SLOW8(64); \
	SLOW8(96)

// SLOW8 folds the 8 values at off(SI) into the sums whose halves are at
// off(DI) and off(DX), in full 64-bit arithmetic, given f in Y15, the bits
// of 1.5·2^52 in Y14 and 0x80000000 in every 32-bit lane of Y11. The terms
// t are computed as in foldGeneric: convert to float64, multiply by f, add
// 1.5·2^52 and subtract its bits as an integer; the multiplication and the
// addition are one FMA, which rounds once, and gives the same result
// because the product is exact (see kernels.go).
// Interleaving lo XOR 2^31 (as unsigned, lo + 2^31) with hi gives sum +
// 2^31 as an int64, to which t is added; the low 32 bits of the result, XOR
// 2^31, are the new lo, the high 32 bits the new hi. The interleave works
// within 128-bit lanes, so the terms are put in its order (values 0, 1, 4,
// 5 and 2, 3, 6, 7) and the de-interleave puts the halves back in memory
// order. It uses Y0–Y7.
#define SLOW8(off) \
	VCVTPS2PD   off(SI), Y0; \
	VCVTPS2PD   off+16(SI), Y1; \
	VFMADD213PD Y14, Y15, Y0; \
	VFMADD213PD Y14, Y15, Y1; \
	VPSUBQ      Y14, Y0, Y0; \
	VPSUBQ      Y14, Y1, Y1; \
	VPERM2I128  $0x20, Y1, Y0, Y2; \
	VPERM2I128  $0x31, Y1, Y0, Y3; \
	VPXOR       off(DI), Y11, Y4; \
	VMOVDQU     off(DX), Y5; \
	VPUNPCKLDQ  Y5, Y4, Y6; \
	VPUNPCKHDQ  Y5, Y4, Y7; \
	VPADDQ      Y2, Y6, Y6; \
	VPADDQ      Y3, Y7, Y7; \
	VSHUFPS     $0x88, Y7, Y6, Y4; \
	VSHUFPS     $0xdd, Y7, Y6, Y5; \
	VPXOR       Y11, Y4, Y4; \
	VMOVDQU     Y4, off(DI); \
	VMOVDQU     Y5, off(DX)

// NEXT32 moves the fold kernels' pointers on by 32 values.
#define NEXT32 \
	ADDQ $128, SI; \
	ADDQ $128, DI; \
	ADDQ $128, DX

// func foldAVX2(lo, hi *int32, x *float32, n int, f float64, fast uint32)
// For i < n (a multiple of 32): adds RoundToEven(float64(x[i])·f) to the
// sum hi[i]·2^32 + lo[i], 32 values per iteration: TRY32 when every value
// of the block is within the fast limit whose bits are fast (fastBits) and
// no low half overflows, else SLOW32.
TEXT ·foldAVX2(SB), NOSPLIT, $0-44
	FOLDARGS
	SHRQ         $5, CX
	JZ           folddone

foldloop:
	OUT32(Y12)
	VPTEST Y0, Y0
	JNZ    foldslow
	TRY32
	JNZ    foldslow
	STORE32

foldnext:
	NEXT32
	DECQ CX
	JNZ  foldloop

folddone:
	VZEROUPPER
	RET

foldslow:
	SLOW32
	JMP foldnext

// func foldCheckedAVX2(lo, hi *int32, x *float32, n int, f float64, fast uint32) int
// The checked fold of foldCheckedGeneric, for n a multiple of 32: each block
// of 32 values is range-checked as in inRangeAVX2 and, if every value is
// finite with |x[i]| ≤ MaxAbs, folded as in foldAVX2. At the first block
// holding a bad value it stops, before storing anything of that block, and
// returns the index where the block starts; it returns n when it folded
// everything. The check reads the block from memory and the conversion reads
// it again, but the second read hits L1: the update crosses the memory bus
// once. (Converting from the registers the check loaded instead costs an
// extract per 128 bits, and measured slower.)
TEXT ·foldCheckedAVX2(SB), NOSPLIT, $0-56
	FOLDARGS
	MOVQ         SI, R8
	SHRQ         $5, CX
	JZ           checkeddone

checkedloop:
	// Once per 4 KiB page of the update and of lo (the block starting
	// within the page's first 128 bytes), prefetch the line 32,768 values
	// ahead, in the page the loop reaches 32 pages later. With 4 KiB pages
	// the hardware prefetchers stop at each page boundary and each new
	// page costs a TLB walk; one prefetch per page, far ahead, starts both
	// early. A prefetch past the end of the update or the sum is harmless:
	// it never faults. Measured on a 64 MiB update (with an int64 sum):
	// about 10–20% faster (and within noise at 0.8 MB); prefetching every
	// line instead, at any distance, was slower than no prefetching at all.
	// hi is read only by the slow path and not prefetched.
	TESTQ      $0xf80, SI
	JNZ        lopage
	PREFETCHT0 131072(SI)

lopage:
	TESTQ      $0xf80, DI
	JNZ        check
	PREFETCHT0 131072(DI)

check:
	// One test decides the common block: every value within the fast
	// limit (so finite, and within ±MaxAbs).
	OUT32(Y12)
	VPTEST Y0, Y0
	JNZ    checkedbig
	TRY32
	JNZ    checkedslow
	STORE32

checkednext:
	NEXT32
	DECQ CX
	JNZ  checkedloop

checkeddone:
	// SI is at the bad block, or at x+4n: the number of values folded is
	// (SI−x)/4.
	SUBQ R8, SI
	SHRQ $2, SI
	MOVQ SI, ret+48(FP)
	VZEROUPPER
	RET

checkedbig:
	// Some value is beyond the fast limit: a bad value, or only a large
	// one, which the exact path folds.
	BCASTD(0x46800000, X4, Y4)
	OUT32(Y4)
	VPTEST Y0, Y0
	JNZ    checkeddone

checkedslow:
	SLOW32
	JMP checkednext

// func inRangeAVX2(x *float32, n int) bool
// Reports whether, for i < n (a multiple of 32), every x[i] is finite with
// |x[i]| ≤ MaxAbs: the magnitude bits, compared as signed 32-bit integers,
// must not exceed those of MaxAbs (NaN and ±Inf compare above).
TEXT ·inRangeAVX2(SB), NOSPLIT, $0-17
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), CX
	RANGE
	VPXOR        Y8, Y8, Y8
	SHRQ         $5, CX
	JZ           rangedone

rangeloop:
	OUT32(Y12)
	VPOR Y0, Y8, Y8
	ADDQ $128, SI
	DECQ CX
	JNZ  rangeloop

rangedone:
	VPTEST    Y8, Y8
	SETEQ     ret+16(FP)
	VZEROUPPER
	RET

// MEAN8 sets the 8 float32 at off(DI) to the means of the sums whose
// halves are at off(SI) (lo) and off(DX) (hi), given 2^32 in every 64-bit
// lane of Y14 and inv in Y15: float64(hi)·2^32 + float64(lo), exact, times
// inv, rounded to float32. It uses Y0–Y3.
#define MEAN8(off) \
	VCVTDQ2PD  off(DX), Y0; \
	VCVTDQ2PD  off+16(DX), Y1; \
	VCVTDQ2PD  off(SI), Y2; \
	VCVTDQ2PD  off+16(SI), Y3; \
	VMULPD     Y14, Y0, Y0; \
	VMULPD     Y14, Y1, Y1; \
	VADDPD     Y2, Y0, Y0; \
	VADDPD     Y3, Y1, Y1; \
	VMULPD     Y15, Y0, Y0; \
	VMULPD     Y15, Y1, Y1; \
	VCVTPD2PSY Y0, X0; \
	VCVTPD2PSY Y1, X1; \
	VMOVUPS    X0, off(DI); \
	VMOVUPS    X1, off+16(DI)

// func scaleMeanAVX2(dst *float32, lo, hi *int32, n int, inv float64, zero bool)
// For i < n (a multiple of 32): dst[i] = float32(float64(sum[i])·inv), sum[i]
// being hi[i]·2^32 + lo[i], 32 values per iteration (MEAN8). With zero, the
// sums are set to zero once read, while their lines are in cache.
TEXT ·scaleMeanAVX2(SB), NOSPLIT, $0-41
	MOVQ         dst+0(FP), DI
	MOVQ         lo+8(FP), SI
	MOVQ         hi+16(FP), DX
	MOVQ         n+24(FP), CX
	VBROADCASTSD inv+32(FP), Y15
	MOVQ         $0x41f0000000000000, AX
	MOVQ         AX, X14
	VPBROADCASTQ X14, Y14
	SHRQ         $5, CX
	JZ           meandone
	MOVBLZX      zero+40(FP), AX
	VPXOR        Y13, Y13, Y13

meanloop:
	MEAN8(0)
	MEAN8(32)
	MEAN8(64)
	MEAN8(96)
	TESTL   AX, AX
	JZ      meannext
	VMOVDQU Y13, (SI)
	VMOVDQU Y13, 32(SI)
	VMOVDQU Y13, 64(SI)
	VMOVDQU Y13, 96(SI)
	VMOVDQU Y13, (DX)
	VMOVDQU Y13, 32(DX)
	VMOVDQU Y13, 64(DX)
	VMOVDQU Y13, 96(DX)

meannext:
	ADDQ $128, SI
	ADDQ $128, DX
	ADDQ $128, DI
	DECQ CX
	JNZ  meanloop

meandone:
	VZEROUPPER
	RET
