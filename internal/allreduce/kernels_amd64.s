//go:build amd64 && !purego

#include "textflag.h"

// func cpuHasAVX2() bool
// AVX2 needs the instruction set (CPUID leaf 7 EBX bit 5), AVX and OSXSAVE
// (leaf 1 ECX bits 28 and 27), and the OS saving XMM and YMM state (XCR0
// bits 1 and 2).
TEXT ·cpuHasAVX2(SB), NOSPLIT, $0-1
	MOVL $0, AX
	CPUID
	CMPL AX, $7
	JB   no
	MOVL $1, AX
	MOVL $0, CX
	CPUID
	ANDL $0x18000000, CX
	CMPL CX, $0x18000000
	JNE  no
	MOVL $0, CX
	XGETBV
	ANDL $6, AX
	CMPL AX, $6
	JNE  no
	MOVL $7, AX
	MOVL $0, CX
	CPUID
	BTL  $5, BX
	JCC  no
	MOVB $1, ret+0(FP)
	RET

no:
	MOVB $0, ret+0(FP)
	RET

// MAGIC puts the bits of 1.5·2^52 in every lane of Y14 (uses AX).
#define MAGIC \
	MOVQ         $0x4338000000000000, AX; \
	MOVQ         AX, X14; \
	VPBROADCASTQ X14, Y14

// RANGE puts the magnitude mask 0x7fffffff in every 32-bit lane of Y13 and
// the bits of float32(MaxAbs) in every lane of Y12 (uses AX).
#define RANGE \
	MOVL         $0x7fffffff, AX; \
	MOVQ         AX, X13; \
	VPBROADCASTD X13, Y13; \
	MOVL         $0x46800000, AX; \
	MOVQ         AX, X12; \
	VPBROADCASTD X12, Y12

// OUT32 sets the lanes of Y0 that correspond to an out-of-range value among
// the 32 at SI, given RANGE's constants: the magnitude bits, compared as
// signed 32-bit integers with those of MaxAbs, exceed them exactly for
// values beyond ±MaxAbs, NaN and ±Inf. Y0 is zero when all 32 are in range.
// It uses Y0–Y3 and leaves SI unchanged.
#define OUT32 \
	VPAND    (SI), Y13, Y0; \
	VPAND    32(SI), Y13, Y1; \
	VPAND    64(SI), Y13, Y2; \
	VPAND    96(SI), Y13, Y3; \
	VPCMPGTD Y12, Y0, Y0; \
	VPCMPGTD Y12, Y1, Y1; \
	VPCMPGTD Y12, Y2, Y2; \
	VPCMPGTD Y12, Y3, Y3; \
	VPOR     Y0, Y1, Y0; \
	VPOR     Y2, Y3, Y2; \
	VPOR     Y0, Y2, Y0

// FOLD32 folds the 32 values at SI into the 32 sums at DI, given f in Y15
// and the bits of 1.5·2^52 in Y14, by the same operations as foldGeneric:
// convert to float64 (four lanes per register), multiply by f, add
// 1.5·2^52, subtract the bits of 1.5·2^52 as an integer, add to the sum and
// store it. It uses Y0–Y7 and leaves SI and DI unchanged.
#define FOLD32 \
	VCVTPS2PD (SI), Y0; \
	VCVTPS2PD 16(SI), Y1; \
	VCVTPS2PD 32(SI), Y2; \
	VCVTPS2PD 48(SI), Y3; \
	VCVTPS2PD 64(SI), Y4; \
	VCVTPS2PD 80(SI), Y5; \
	VCVTPS2PD 96(SI), Y6; \
	VCVTPS2PD 112(SI), Y7; \
	VMULPD    Y15, Y0, Y0; \
	VMULPD    Y15, Y1, Y1; \
	VMULPD    Y15, Y2, Y2; \
	VMULPD    Y15, Y3, Y3; \
	VMULPD    Y15, Y4, Y4; \
	VMULPD    Y15, Y5, Y5; \
	VMULPD    Y15, Y6, Y6; \
	VMULPD    Y15, Y7, Y7; \
	VADDPD    Y14, Y0, Y0; \
	VADDPD    Y14, Y1, Y1; \
	VADDPD    Y14, Y2, Y2; \
	VADDPD    Y14, Y3, Y3; \
	VADDPD    Y14, Y4, Y4; \
	VADDPD    Y14, Y5, Y5; \
	VADDPD    Y14, Y6, Y6; \
	VADDPD    Y14, Y7, Y7; \
	VPSUBQ    Y14, Y0, Y0; \
	VPSUBQ    Y14, Y1, Y1; \
	VPSUBQ    Y14, Y2, Y2; \
	VPSUBQ    Y14, Y3, Y3; \
	VPSUBQ    Y14, Y4, Y4; \
	VPSUBQ    Y14, Y5, Y5; \
	VPSUBQ    Y14, Y6, Y6; \
	VPSUBQ    Y14, Y7, Y7; \
	VPADDQ    (DI), Y0, Y0; \
	VPADDQ    32(DI), Y1, Y1; \
	VPADDQ    64(DI), Y2, Y2; \
	VPADDQ    96(DI), Y3, Y3; \
	VPADDQ    128(DI), Y4, Y4; \
	VPADDQ    160(DI), Y5, Y5; \
	VPADDQ    192(DI), Y6, Y6; \
	VPADDQ    224(DI), Y7, Y7; \
	VMOVDQU   Y0, (DI); \
	VMOVDQU   Y1, 32(DI); \
	VMOVDQU   Y2, 64(DI); \
	VMOVDQU   Y3, 96(DI); \
	VMOVDQU   Y4, 128(DI); \
	VMOVDQU   Y5, 160(DI); \
	VMOVDQU   Y6, 192(DI); \
	VMOVDQU   Y7, 224(DI)

// func foldAVX2(sum *int64, x *float32, n int, f float64)
// For i < n (a multiple of 32): sum[i] += RoundToEven(float64(x[i])·f),
// 32 values per iteration (FOLD32).
TEXT ·foldAVX2(SB), NOSPLIT, $0-32
	MOVQ         sum+0(FP), DI
	MOVQ         x+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSD f+24(FP), Y15
	MAGIC
	SHRQ         $5, CX
	JZ           folddone

foldloop:
	FOLD32
	ADDQ $128, SI
	ADDQ $256, DI
	DECQ CX
	JNZ  foldloop

folddone:
	VZEROUPPER
	RET

// func foldCheckedAVX2(sum *int64, x *float32, n int, f float64) int
// The checked fold of foldCheckedGeneric, for n a multiple of 32: each block
// of 32 values is range-checked as in inRangeAVX2 and, if every value is
// finite with |x[i]| ≤ MaxAbs, folded as in foldAVX2. At the first block
// holding a bad value it stops, before storing anything of that block, and
// returns the index where the block starts; it returns n when it folded
// everything. The check reads the block from memory and the conversion reads
// it again, but the second read hits L1: the update crosses the memory bus
// once. (Converting from the registers the check loaded instead costs an
// extract per 128 bits, and measured slower.)
TEXT ·foldCheckedAVX2(SB), NOSPLIT, $0-40
	MOVQ         sum+0(FP), DI
	MOVQ         x+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSD f+24(FP), Y15
	MAGIC
	RANGE
	MOVQ         SI, R8
	SHRQ         $5, CX
	JZ           checkeddone

checkedloop:
	// Once per 4 KiB page of the update (the block starting within its
	// first 128 bytes), and once per page of the sum (within its first
	// 256), prefetch the line 32,768 values ahead, in the page the loop
	// reaches 32 pages (of update; 64 of sum) later. With 4 KiB pages the
	// hardware prefetchers stop at each page boundary and each new page
	// costs a TLB walk; one prefetch per page, far ahead, starts both early.
	// A prefetch past the end of the update or the sum is harmless: it never
	// faults. Measured on a 64 MiB update: about 10–20% faster (and within
	// noise at 0.8 MB); prefetching every line instead, at any distance, was
	// slower than no prefetching at all.
	TESTQ      $0xf80, SI
	JNZ        sumpage
	PREFETCHT0 131072(SI)

sumpage:
	TESTQ      $0xf00, DI
	JNZ        check
	PREFETCHT0 262144(DI)

check:
	// One test decides the block.
	OUT32
	VPTEST Y0, Y0
	JNZ    checkeddone

	// A clean block: fold it and move on.
	FOLD32
	ADDQ $128, SI
	ADDQ $256, DI
	DECQ CX
	JNZ  checkedloop

checkeddone:
	// SI is at the bad block, or at x+4n: the number of values folded is
	// (SI−x)/4.
	SUBQ R8, SI
	SHRQ $2, SI
	MOVQ SI, ret+32(FP)
	VZEROUPPER
	RET

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
	OUT32
	VPOR Y0, Y8, Y8
	ADDQ $128, SI
	DECQ CX
	JNZ  rangeloop

rangedone:
	VPTEST    Y8, Y8
	SETEQ     ret+16(FP)
	VZEROUPPER
	RET

// func scaleMeanAVX2(dst *float32, sum *int64, n int, inv float64)
// For i < n (a multiple of 32): dst[i] = float32(float64(sum[i])·inv), the
// int64 converted exactly (|sum[i]| ≤ 2^51) as bits(1.5·2^52) + sum[i]
// reinterpreted as a float64, minus 1.5·2^52.
TEXT ·scaleMeanAVX2(SB), NOSPLIT, $0-32
	MOVQ         dst+0(FP), DI
	MOVQ         sum+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSD inv+24(FP), Y15
	MAGIC
	SHRQ         $5, CX
	JZ           meandone

meanloop:
	VPADDQ     (SI), Y14, Y0
	VPADDQ     32(SI), Y14, Y1
	VPADDQ     64(SI), Y14, Y2
	VPADDQ     96(SI), Y14, Y3
	VPADDQ     128(SI), Y14, Y4
	VPADDQ     160(SI), Y14, Y5
	VPADDQ     192(SI), Y14, Y6
	VPADDQ     224(SI), Y14, Y7
	VSUBPD     Y14, Y0, Y0
	VSUBPD     Y14, Y1, Y1
	VSUBPD     Y14, Y2, Y2
	VSUBPD     Y14, Y3, Y3
	VSUBPD     Y14, Y4, Y4
	VSUBPD     Y14, Y5, Y5
	VSUBPD     Y14, Y6, Y6
	VSUBPD     Y14, Y7, Y7
	VMULPD     Y15, Y0, Y0
	VMULPD     Y15, Y1, Y1
	VMULPD     Y15, Y2, Y2
	VMULPD     Y15, Y3, Y3
	VMULPD     Y15, Y4, Y4
	VMULPD     Y15, Y5, Y5
	VMULPD     Y15, Y6, Y6
	VMULPD     Y15, Y7, Y7
	VCVTPD2PSY Y0, X0
	VCVTPD2PSY Y1, X1
	VCVTPD2PSY Y2, X2
	VCVTPD2PSY Y3, X3
	VCVTPD2PSY Y4, X4
	VCVTPD2PSY Y5, X5
	VCVTPD2PSY Y6, X6
	VCVTPD2PSY Y7, X7
	VMOVUPS    X0, (DI)
	VMOVUPS    X1, 16(DI)
	VMOVUPS    X2, 32(DI)
	VMOVUPS    X3, 48(DI)
	VMOVUPS    X4, 64(DI)
	VMOVUPS    X5, 80(DI)
	VMOVUPS    X6, 96(DI)
	VMOVUPS    X7, 112(DI)
	ADDQ       $256, SI
	ADDQ       $128, DI
	DECQ       CX
	JNZ        meanloop

meandone:
	VZEROUPPER
	RET
