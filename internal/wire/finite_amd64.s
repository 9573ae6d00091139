//go:build amd64 && !purego

#include "textflag.h"

// func allFiniteAVX2(p *float32, n int) bool
//
// A value is NaN or infinite exactly when its exponent bits are all ones:
// each value is ANDed with the exponent mask and compared with it, and the
// lanes that match are ORed into Y4, 32 values (four vectors) per
// iteration. The result is whether Y4 stayed zero. The loop does not stop
// at a bad value: the caller then looks for it, and tensors are finite
// almost always.
TEXT ·allFiniteAVX2(SB), NOSPLIT, $0-17
	MOVQ         p+0(FP), SI
	MOVQ         n+8(FP), CX
	SHRQ         $5, CX
	MOVL         $0x7f800000, AX
	MOVQ         AX, X5
	VPBROADCASTD X5, Y5
	VPXOR        Y4, Y4, Y4

loop:
	VPAND    (SI), Y5, Y0
	VPAND    32(SI), Y5, Y1
	VPAND    64(SI), Y5, Y2
	VPAND    96(SI), Y5, Y3
	VPCMPEQD Y5, Y0, Y0
	VPCMPEQD Y5, Y1, Y1
	VPCMPEQD Y5, Y2, Y2
	VPCMPEQD Y5, Y3, Y3
	VPOR     Y0, Y1, Y0
	VPOR     Y2, Y3, Y2
	VPOR     Y0, Y2, Y0
	VPOR     Y0, Y4, Y4
	ADDQ     $128, SI
	DECQ     CX
	JNZ      loop

	VPTEST Y4, Y4
	SETEQ  ret+16(FP)
	VZEROUPPER
	RET
