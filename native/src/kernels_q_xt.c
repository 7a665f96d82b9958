/* kernels_q_xt.c: the block kernels (quant.c's SB_Q8_0, SB_Q4_0, SB_Q5, SB_Q6 layouts)
 * for XTheadVector / RVV 0.7.1, the Milk-V Duo's C906, in assembly: GCC 14 keeps the
 * sums of an intrinsics version apart with register copies and extra vsetvli.
 *
 * As in kernels_q_rvv.c, 32 rows advance together, one lane per row: a column of a
 * block (32 weights, e8m2) times one activation (a scalar) is added into 32 int16
 * products by one widening multiply-add, and the products are widened into 32 int32
 * sums now and then; once per group the sums are converted, scaled and added into 32
 * float sums, which stay in registers for the whole row block.
 *
 * The widening is the costly step (as costly as two multiply-adds), so it comes only
 * when the int16 products could overflow: before each group, a plan (xt_plan) walks
 * the group's columns in the order the kernel takes them, a unit of a few columns at a
 * time, and marks the units before which the products must be widened, from the sum of
 * |x| the products so far may hold: 32767 / max |weight|. That bound is exact for any
 * weights the layout can hold, so the integer sums are exact as in every other set.
 * With activations as a model makes them, most of a group fits in one int16 run.
 *
 * Registers: v0-v3 the int16 products (e16m4), v4-v15 six e8m2 working groups, v16-v23
 * the float sums, v24-v31 the int32 sums (both e32m8).
 */
#if defined(__riscv_xtheadvector)
#include <stdlib.h>
#include <string.h>

#include "kernels_q.h"

#define XT_PLAN_GROUPS 64 // groups planned at a time: the plan lives on the stack

/* Column order of each layout's units: unit k is columns order[k * unit ...]. */
static const uint8_t ORDER_LINEAR[SB_QK] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                            11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                            22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
// q5: nibble rows 4s + t and 4s + 4 + t (s = 0, 2), t outer: one high-bit row per t
static const uint8_t ORDER_Q5[SB_QK] = {0, 4, 16, 20, 8,  12, 24, 28, 1, 5, 17, 21, 9,  13, 25, 29,
                                        2, 6, 18, 22, 10, 14, 26, 30, 3, 7, 19, 23, 11, 15, 27, 31};
// q6: nibble rows i and i + 8 share high-bit row i
static const uint8_t ORDER_Q6[SB_QK] = {0, 16, 8,  24, 1, 17, 9,  25, 2, 18, 10, 26, 3, 19, 11, 27,
                                        4, 20, 12, 28, 5, 21, 13, 29, 6, 22, 14, 30, 7, 23, 15, 31};

typedef struct {
    const uint8_t *order;
    int unit;   // columns per unit: at most `limit` / 127 of them
    int limit;  // 32767 / the largest |weight| (q8: 128; q4: 15; q5: 31; q6: 63)
    int offset; // the stored weights are q + offset: the sums start at -offset * xsum
} xt_layout;

static const xt_layout XT_Q8 = {ORDER_LINEAR, 2, 32767 / 128, 0};
static const xt_layout XT_Q4 = {ORDER_LINEAR, 4, 32767 / 15, 8};
static const xt_layout XT_Q5 = {ORDER_Q5, 4, 32767 / 31, 16};
static const xt_layout XT_Q6 = {ORDER_Q6, 4, 32767 / 63, 32};

/* Per group g: bit k of plan[g] set = widen before unit k; start[g] the int32 sums'
 * first value. Unit 0 never needs it: unit * 127 <= limit, so bit 0 says instead that
 * the int32 sums must be set when the group begins. Where they need not be (no widening
 * before the group's end, and start fits the int16 scalar of th.vwadd.vx), the end
 * widens the products and adds start in one instruction: most groups of the draft
 * classifier's q4, whose 16 cycles (an e32m8 splat) a group-block saves. */
static void xt_plan(uint16_t *plan, int32_t *start, const xt_layout *l, const int8_t *xq,
                    const int32_t *xsum, int groups) {
    for (int g = 0; g < groups; g++, xq += SB_QK) {
        int used = 0;
        uint16_t bits = 0;
        for (int k = 0; k < SB_QK / l->unit; k++) {
            int s = 0;
            for (int j = 0; j < l->unit; j++) s += abs(xq[l->order[k * l->unit + j]]);
            if (used + s > l->limit) {
                bits |= (uint16_t)(1u << k);
                used = 0;
            }
            used += s;
        }
        start[g] = -l->offset * xsum[g];
        if (bits || start[g] < INT16_MIN || start[g] > INT16_MAX) bits |= 1;
        plan[g] = bits;
    }
}

#define XT_CLOBBER "memory", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", \
    "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21", \
    "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31"

#define XT_STR(x) #x
#define XT_S(x) XT_STR(x)

/* A group: its plan and first sums (plan bit 0), then (body) its columns into v0 and
 * v24. */
#define XT_GROUP_BEGIN                          \
    "1:\n\t"                                    \
    "lhu %[pl], 0(%[plan])\n\t"                 \
    "andi %[t1], %[pl], 1\n\t"                  \
    "beqz %[t1], 4f\n\t"                        \
    "lw %[t0], 0(%[start])\n\t"                 \
    "th.vsetvli zero, %[n32], e32, m8\n\t"      \
    "th.vmv.v.x v24, %[t0]\n\t"                 \
    "4:\n\t"                                    \
    "th.vsetvli zero, %[n32], e8, m2\n\t"

/* v24 += the int16 products */
#define XT_WIDEN                                \
    "th.vsetvli zero, %[n32], e16, m4\n\t"      \
    "th.vwmacc.vx v24, %[one], v0\n\t"          \
    "th.vsetvli zero, %[n32], e8, m2\n\t"

/* The first product of unit k into v0 (column vreg, activation at x + xoff): it
 * overwrites v0 for unit 0 and after a widening, else adds. */
#define XT_FIRST(k, col, xoff)                          \
    "lb %[t0], " #xoff "(%[x])\n\t"                     \
    "slli %[t1], %[pl], 63 - " #k "\n\t"                \
    "bgez %[t1], 2f\n\t"                                \
    XT_WIDEN                                            \
    "th.vwmul.vx v0, " col ", %[t0]\n\t"                \
    "j 3f\n\t"                                          \
    "2:\n\t"                                            \
    "th.vwmacc.vx v0, %[t0], " col "\n\t"               \
    "3:\n\t"
#define XT_FIRST0(col, xoff)                            \
    "lb %[t0], " #xoff "(%[x])\n\t"                     \
    "th.vwmul.vx v0, " col ", %[t0]\n\t"
#define XT_MACC(col, xoff)                              \
    "lb %[t0], " #xoff "(%[x])\n\t"                     \
    "th.vwmacc.vx v0, %[t0], " col "\n\t"

/* Widen the last products (into the sums, or with start as the sums: plan bit 0);
 * v16 += float(v24) * fp16 scales * xs; next group. */
#define XT_GROUP_END(wbytes)                            \
    "th.vsetvli zero, %[n32], e16, m4\n\t"              \
    "andi %[t1], %[pl], 1\n\t"                          \
    "bnez %[t1], 5f\n\t"                                \
    "lw %[t0], 0(%[start])\n\t"                         \
    "th.vwadd.vx v24, v0, %[t0]\n\t"                    \
    "j 6f\n\t"                                          \
    "5:\n\t"                                            \
    "th.vwmacc.vx v24, %[one], v0\n\t"                  \
    "6:\n\t"                                            \
    "th.vle.v v0, (%[ws])\n\t"                          \
    "th.vfwcvt.f.f.v v8, v0\n\t"                        \
    "flw %[fxs], 0(%[xs])\n\t"                          \
    "th.vsetvli zero, %[n32], e32, m8\n\t"              \
    "th.vfcvt.f.x.v v24, v24\n\t"                       \
    "th.vfmul.vv v24, v24, v8\n\t"                      \
    "th.vfmacc.vf v16, %[fxs], v24\n\t"                 \
    "addi %[w], %[w], " #wbytes "\n\t"                  \
    "addi %[ws], %[ws], 64\n\t"                         \
    "addi %[x], %[x], 32\n\t"                           \
    "addi %[xs], %[xs], 4\n\t"                          \
    "addi %[plan], %[plan], 2\n\t"                      \
    "addi %[start], %[start], 4\n\t"                    \
    "addi %[groups], %[groups], -1\n\t"                 \
    "bnez %[groups], 1b\n\t"

#define XT_BLOCK_ASM(body, wbytes)                                                          \
    __asm__ volatile("th.vsetvli zero, %[n32], e32, m8\n\t"                                 \
                     "th.vle.v v16, (%[acc])\n\t"                                           \
                     XT_GROUP_BEGIN body XT_GROUP_END(wbytes)                                \
                     "th.vsetvli zero, %[n32], e32, m8\n\t"                                 \
                     "th.vse.v v16, (%[acc])\n\t"                                           \
                     : [w] "+r"(w), [ws] "+r"(ws), [x] "+r"(x), [xs] "+r"(xs),              \
                       [plan] "+r"(plan), [start] "+r"(start), [groups] "+r"(groups),       \
                       [pl] "=&r"(pl), [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2),      \
                       [fxs] "=&f"(fxs)                                                     \
                     : [acc] "r"(acc), [n32] "r"(32L), [one] "r"(1L), [hmask] "r"(hmask)    \
                     : XT_CLOBBER)

typedef void (*xt_block_fn)(float *acc, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                            const float *xs, const uint16_t *plan, const int32_t *start,
                            long groups);

// ----------------------------------------------------------------------------
// q8_0: unit k = columns 2k, 2k + 1 (32 bytes each)

#define Q8_UNIT(k)                                                      \
    "th.vle.v v8, (%[w])\n\t"                                           \
    "addi %[t2], %[w], 32\n\t"                                          \
    "th.vle.v v10, (%[t2])\n\t"                                         \
    "addi %[w], %[w], 64\n\t"                                           \
    XT_FIRST(k, "v8", 2 * k) XT_MACC("v10", 2 * k + 1)

static void q8_block(float *acc, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                     const float *xs, const uint16_t *plan, const int32_t *start, long groups) {
    long pl, t0, t1, t2, hmask = 0;
    float fxs;
    XT_BLOCK_ASM("th.vle.v v8, (%[w])\n\t"
                 "addi %[t2], %[w], 32\n\t"
                 "th.vle.v v10, (%[t2])\n\t"
                 "addi %[w], %[w], 64\n\t"
                 XT_FIRST0("v8", 0) XT_MACC("v10", 1)
                 Q8_UNIT(1) Q8_UNIT(2) Q8_UNIT(3) Q8_UNIT(4) Q8_UNIT(5) Q8_UNIT(6)
                 Q8_UNIT(7) Q8_UNIT(8) Q8_UNIT(9) Q8_UNIT(10) Q8_UNIT(11) Q8_UNIT(12)
                 Q8_UNIT(13) Q8_UNIT(14) Q8_UNIT(15), 0); // the units moved w on
}

// ----------------------------------------------------------------------------
// q4_0: unit k = nibble rows 2k, 2k + 1 = columns 4k .. 4k + 3

#define Q4_SPLIT(row)                                                   \
    "addi %[t2], %[w], 32 * (" #row ")\n\t"                               \
    "th.vle.v v4, (%[t2])\n\t"                                          \
    "addi %[t2], %[w], 32 * (" #row ") + 32\n\t"                          \
    "th.vle.v v6, (%[t2])\n\t"                                          \
    "th.vand.vi v8, v4, 15\n\t"                                         \
    "th.vsrl.vi v10, v4, 4\n\t"                                         \
    "th.vand.vi v12, v6, 15\n\t"                                        \
    "th.vsrl.vi v14, v6, 4\n\t"
#define Q4_UNIT(k)                                                      \
    Q4_SPLIT(2 * k) XT_FIRST(k, "v8", 4 * k) XT_MACC("v10", 4 * k + 1)  \
    XT_MACC("v12", 4 * k + 2) XT_MACC("v14", 4 * k + 3)

static void q4_block(float *acc, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                     const float *xs, const uint16_t *plan, const int32_t *start, long groups) {
    long pl, t0, t1, t2, hmask = 0;
    float fxs;
    XT_BLOCK_ASM(Q4_SPLIT(0) XT_FIRST0("v8", 0) XT_MACC("v10", 1) XT_MACC("v12", 2)
                 XT_MACC("v14", 3)
                 Q4_UNIT(1) Q4_UNIT(2) Q4_UNIT(3) Q4_UNIT(4) Q4_UNIT(5) Q4_UNIT(6) Q4_UNIT(7),
                 512);
}

// ----------------------------------------------------------------------------
// q5 / q6: a nibble row N (columns p and p + 16) joined with its high bits, taken from
// the high-bit row H in v4 by a shift and the mask in hmask; the row's two columns are
// left in v8 (column p) and v10 (column p + 16), v6 and v12 are scratch.

#define HI_LOAD(hrow)                                                   \
    "addi %[t2], %[w], 512 + 32 * (" #hrow ")\n\t"                        \
    "th.vle.v v4, (%[t2])\n\t"
// H shifted left by lo_shift for column p, right by hi_shift (HI_JOIN) or not at all
// (HI_JOIN0) for column p + 16
#define HI_LO(row, lo_shift)                                            \
    "addi %[t2], %[w], 32 * (" #row ")\n\t"                               \
    "th.vle.v v6, (%[t2])\n\t"                                          \
    "th.vand.vi v8, v6, 15\n\t"                                         \
    "th.vsll.vi v12, v4, " #lo_shift "\n\t"                             \
    "th.vand.vx v12, v12, %[hmask]\n\t"                                 \
    "th.vor.vv v8, v8, v12\n\t"                                         \
    "th.vsrl.vi v10, v6, 4\n\t"
#define HI_JOIN(row, lo_shift, hi_shift)                                \
    HI_LO(row, lo_shift)                                                \
    "th.vsrl.vi v12, v4, " #hi_shift "\n\t"                             \
    "th.vand.vx v12, v12, %[hmask]\n\t"                                 \
    "th.vor.vv v10, v10, v12\n\t"
#define HI_JOIN0(row, lo_shift)                                         \
    HI_LO(row, lo_shift)                                                \
    "th.vand.vx v12, v4, %[hmask]\n\t"                                  \
    "th.vor.vv v10, v10, v12\n\t"

/* q5: column 4c + t has its high bit in bit c of high-bit row t: nibble row 4s + t
 * (columns 4s + t, 4s + t + 16) takes bits s and s + 4. Unit (t, s = 0 or 2) is rows
 * 4s + t and 4s + 4 + t. */
#define Q5_UNIT(k, t, s, first, join)                                                   \
    join first                                                                          \
    XT_MACC("v10", 4 * s + t + 16)                                                      \
    HI_JOIN(4 * s + 4 + t, 3 - s, s + 1)                                                \
    XT_MACC("v8", 4 * s + 4 + t) XT_MACC("v10", 4 * s + 4 + t + 16)
#define Q5_T(t)                                                                         \
    HI_LOAD(t)                                                                          \
    Q5_UNIT(2 * t, t, 0, XT_FIRST(2 * t, "v8", t), HI_JOIN0(t, 4))                      \
    Q5_UNIT(2 * t + 1, t, 2, XT_FIRST(2 * t + 1, "v8", 8 + t), HI_JOIN(8 + t, 2, 2))

static void q5_block(float *acc, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                     const float *xs, const uint16_t *plan, const int32_t *start, long groups) {
    long pl, t0, t1, t2, hmask = 0x10;
    float fxs;
    XT_BLOCK_ASM(HI_LOAD(0) Q5_UNIT(0, 0, 0, XT_FIRST0("v8", 0), HI_JOIN0(0, 4))
                 Q5_UNIT(1, 0, 2, XT_FIRST(1, "v8", 8), HI_JOIN(8, 2, 2)) Q5_T(1) Q5_T(2)
                 Q5_T(3),
                 640);
}

/* q6: column i + 8c has its high bits in bits 2c, 2c + 1 of high-bit row i: nibble row
 * i (columns i, i + 16) takes bits 0-1 and 4-5, row i + 8 (columns i + 8, i + 24) bits
 * 2-3 and 6-7. Unit i is rows i and i + 8. */
#define Q6_UNIT(i, first)                                                               \
    HI_LOAD(i) HI_JOIN0(i, 4) first XT_MACC("v10", i + 16)                            \
    HI_JOIN(i + 8, 2, 2) XT_MACC("v8", i + 8) XT_MACC("v10", i + 24)

static void q6_block(float *acc, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                     const float *xs, const uint16_t *plan, const int32_t *start, long groups) {
    long pl, t0, t1, t2, hmask = 0x30;
    float fxs;
    XT_BLOCK_ASM(Q6_UNIT(0, XT_FIRST0("v8", 0)) Q6_UNIT(1, XT_FIRST(1, "v8", 1))
                 Q6_UNIT(2, XT_FIRST(2, "v8", 2)) Q6_UNIT(3, XT_FIRST(3, "v8", 3))
                 Q6_UNIT(4, XT_FIRST(4, "v8", 4)) Q6_UNIT(5, XT_FIRST(5, "v8", 5))
                 Q6_UNIT(6, XT_FIRST(6, "v8", 6)) Q6_UNIT(7, XT_FIRST(7, "v8", 7)),
                 768);
}

// ----------------------------------------------------------------------------
// SB_Q4_ROW, SB_Q8_ROW: the blocks above, one int32 run per row over every group (x has
// one scale), so a group ends with no float work; the plan's widenings carry across
// groups.

/* Bit k of plan[g]: widen before unit k of group g (the first unit of all never). */
static void xt_plan_rows(uint16_t *plan, const xt_layout *l, const int8_t *xq, int groups) {
    int used = 0;
    for (int g = 0; g < groups; g++, xq += SB_QK) {
        uint16_t bits = 0;
        for (int k = 0; k < SB_QK / l->unit; k++) {
            int s = 0;
            for (int j = 0; j < l->unit; j++) s += abs(xq[k * l->unit + j]);
            if (used + s > l->limit) {
                bits |= (uint16_t)(1u << k);
                used = 0;
            }
            used += s;
        }
        plan[g] = bits;
    }
}

/* out (32 rows) = float(start + the rows' sums) * their scales * xs: the products start
 * at zero and every unit checks the plan. */
#define XT_ROW_ASM(body, wbytes)                                                            \
    __asm__ volatile("th.vsetvli zero, %[n32], e32, m8\n\t"                                 \
                     "th.vmv.v.x v24, %[start]\n\t"                                         \
                     "th.vsetvli zero, %[n32], e16, m4\n\t"                                 \
                     "th.vmv.v.i v0, 0\n\t"                                                 \
                     "th.vsetvli zero, %[n32], e8, m2\n\t"                                  \
                     "1:\n\t"                                                               \
                     "lhu %[pl], 0(%[plan])\n\t"                                            \
                     body                                                                   \
                     "addi %[w], %[w], " #wbytes "\n\t"                                     \
                     "addi %[x], %[x], 32\n\t"                                              \
                     "addi %[plan], %[plan], 2\n\t"                                         \
                     "addi %[groups], %[groups], -1\n\t"                                    \
                     "bnez %[groups], 1b\n\t"                                               \
                     "th.vsetvli zero, %[n32], e16, m4\n\t"                                 \
                     "th.vwmacc.vx v24, %[one], v0\n\t"                                     \
                     "th.vle.v v8, (%[ws])\n\t"                                             \
                     "th.vfwcvt.f.f.v v16, v8\n\t"                                          \
                     "th.vsetvli zero, %[n32], e32, m8\n\t"                                 \
                     "th.vfcvt.f.x.v v24, v24\n\t"                                          \
                     "th.vfmul.vv v24, v24, v16\n\t"                                        \
                     "th.vfmul.vf v24, v24, %[fxs]\n\t"                                     \
                     "th.vse.v v24, (%[out])\n\t"                                           \
                     : [w] "+r"(w), [x] "+r"(x), [plan] "+r"(plan), [groups] "+r"(groups),  \
                       [pl] "=&r"(pl), [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2)       \
                     : [out] "r"(out), [ws] "r"(ws), [start] "r"(start), [fxs] "f"(xs),     \
                       [n32] "r"(32L), [one] "r"(1L)                                        \
                     : XT_CLOBBER)

typedef void (*xt_row_fn)(float *out, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                          float xs, const uint16_t *plan, long start, long groups);

static void q4row_block(float *out, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                        float xs, const uint16_t *plan, long start, long groups) {
    long pl, t0, t1, t2;
    XT_ROW_ASM(Q4_UNIT(0) Q4_UNIT(1) Q4_UNIT(2) Q4_UNIT(3) Q4_UNIT(4) Q4_UNIT(5) Q4_UNIT(6)
               Q4_UNIT(7),
               512);
}

static void q8row_block(float *out, const uint8_t *w, const uint16_t *ws, const int8_t *x,
                        float xs, const uint16_t *plan, long start, long groups) {
    long pl, t0, t1, t2;
    XT_ROW_ASM(Q8_UNIT(0) Q8_UNIT(1) Q8_UNIT(2) Q8_UNIT(3) Q8_UNIT(4) Q8_UNIT(5) Q8_UNIT(6)
               Q8_UNIT(7) Q8_UNIT(8) Q8_UNIT(9) Q8_UNIT(10) Q8_UNIT(11) Q8_UNIT(12)
               Q8_UNIT(13) Q8_UNIT(14) Q8_UNIT(15),
               0); // the units moved w on
}

/* The row-scaled products, or the portable kernel where the plan would not fit the
 * stack. */
static void matvec_rows_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                           const uint8_t *w, const uint16_t *ws, int n, int d, int bits,
                           const xt_layout *l, xt_row_fn block, sb_qmatvec_fn generic) {
    int ng = n / SB_QK;
    if (ng == 0 || ng > XT_PLAN_GROUPS) {
        generic(out, xq, xs, xsum, w, ws, n, d, SB_QK);
        return;
    }
    uint16_t plan[XT_PLAN_GROUPS];
    xt_plan_rows(plan, l, xq, ng);
    long total = 0;
    for (int g = 0; g < ng; g++) total += xsum[g];
    for (int b = 0; b < d; b += SB_QK) {
        float part[SB_QK];
        float *dst = d - b < SB_QK ? part : out + b; // a last block of padding rows
        block(dst, w + (size_t)(b / SB_QK) * ng * SB_QK * SB_QK * bits / 8, ws + b, xq, xs[0],
              plan, -l->offset * total, ng);
        if (dst == part) memcpy(out + b, part, sizeof(float) * (size_t)(d - b));
    }
}

void sb_matvec_q4_row_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                         const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_rows_xt(out, xq, xs, xsum, w, ws, n, d, 4, &XT_Q4, q4row_block,
                   sb_matvec_q4_row_generic);
}

void sb_matvec_q8_row_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                         const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_rows_xt(out, xq, xs, xsum, w, ws, n, d, 8, &XT_Q8, q8row_block,
                   sb_matvec_q8_row_generic);
}

// ----------------------------------------------------------------------------
// products

/* out (d,) = W @ x, W in blocks of `bits`-bit columns, a row block at a time, its
 * groups planned XT_PLAN_GROUPS at a time. */
static void matvec_blocks(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                          const uint8_t *w, const uint16_t *ws, int n, int d, int bits,
                          const xt_layout *l, xt_block_fn block) {
    int ng = n / SB_QK;
    if (ng == 0) memset(out, 0, sizeof(float) * (size_t)d);
    size_t group_bytes = (size_t)SB_QK * SB_QK * bits / 8;
    uint16_t plan[XT_PLAN_GROUPS];
    int32_t start[XT_PLAN_GROUPS];
    for (int g0 = 0; g0 < ng; g0 += XT_PLAN_GROUPS) {
        int groups = ng - g0 < XT_PLAN_GROUPS ? ng - g0 : XT_PLAN_GROUPS;
        xt_plan(plan, start, l, xq + g0 * SB_QK, xsum + g0, groups);
        for (int b = 0; b < d; b += SB_QK) {
            size_t bg = (size_t)(b / SB_QK) * ng + g0; // the first block-group
            size_t bytes = sizeof(float) * (size_t)(d - b < SB_QK ? d - b : SB_QK);
            float acc[SB_QK] = {0};
            if (g0 > 0) memcpy(acc, out + b, bytes); // the sums of the groups before
            block(acc, w + bg * group_bytes, ws + bg * SB_QK, xq + g0 * SB_QK, xs + g0, plan,
                  start, groups);
            memcpy(out + b, acc, bytes);
        }
    }
}

void sb_matvec_q8_0_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                       const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_blocks(out, xq, xs, xsum, w, ws, n, d, 8, &XT_Q8, q8_block);
}

void sb_matvec_q4_0_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                       const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_blocks(out, xq, xs, xsum, w, ws, n, d, 4, &XT_Q4, q4_block);
}

void sb_matvec_q5_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                     const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_blocks(out, xq, xs, xsum, w, ws, n, d, 5, &XT_Q5, q5_block);
}

void sb_matvec_q6_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                     const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_blocks(out, xq, xs, xsum, w, ws, n, d, 6, &XT_Q6, q6_block);
}
#endif
