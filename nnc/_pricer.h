/* One context priced under the nine init sets at once (spec A.3, A.4; the engine's
 * init-set choice).  Each set keeps its own fast and slow states, adapting as in
 * spec 9.3.3, and adds up the estimated cost of every bin.
 *
 * The states of sets 0-7 move together in the eight int16 lanes of one vector for F and
 * one for S (SSE2, or GCC/Clang vector extensions elsewhere; set 8, and every set
 * without vector support, in scalar code), with exact rewritings of the scalar update
 * of nnc/_engine.pyx (ctx_update):
 *   - the adaptation table of 9.3.3, ADAPT[i] for i = 0..31, is the piecewise-linear
 *     max(2512 - 224 i, 1424 - 96 i, 1040 - 64 i, 64) for i < 31 and 0 for i = 31
 *     (the engine checks this against nnc.tables at import);
 *   - ADAPT[i] >> sh is (ADAPT[i] * 2^(7 - sh)) >> 7, a per-lane multiplication
 *     (sh is 4 ... 7, so the product stays under 2^15);
 *   - an update towards bin 0 is the update towards bin 1 of the negated state.
 * The costs are looked up per set from the engine's table, so every sum equals the
 * scalar one.
 */
#ifndef NNC_PRICER_H
#define NNC_PRICER_H

#include <stdint.h>
#include <string.h>

#define NNC_PRICER_SETS 9

typedef struct {
    int16_t f[NNC_PRICER_SETS];       /* fast state F of each set */
    int16_t s[NNC_PRICER_SETS];       /* slow state S */
    uint64_t cost[NNC_PRICER_SETS];   /* accumulated cost in 1/32768 bit */
} nnc_pricer;

/* per-set multipliers 2^(7 - sh0), 2^(7 - sh1) and initial states; costs [2 q + match] */
typedef struct {
    int16_t mul_f[NNC_PRICER_SETS];
    int16_t mul_s[NNC_PRICER_SETS];
    int16_t init_f[NNC_PRICER_SETS];
    int16_t init_s[NNC_PRICER_SETS];
    uint32_t est[64];
} nnc_pricer_tables;

static inline void nnc_pricer_reset(nnc_pricer *p, const nnc_pricer_tables *t)
{
    memcpy(p->f, t->init_f, sizeof p->f);
    memcpy(p->s, t->init_s, sizeof p->s);
}

static inline int16_t nnc_adapt_step(int16_t i)
{
    int16_t a = (int16_t)(2512 - 224 * i), b = (int16_t)(1424 - 96 * i), c = (int16_t)(1040 - 64 * i), r;
    r = a > b ? a : b;
    r = r > c ? r : c;
    r = r > 64 ? r : 64;
    return i == 31 ? 0 : r;
}

/* one set k in scalar code: the cost of bin, then the adaptation */
static inline void nnc_price_set(nnc_pricer *p, const nnc_pricer_tables *t, int k, int bin)
{
    int16_t f = p->f[k], s = p->s[k], c = (int16_t)(s + 16 * f);
    int16_t q = (int16_t)(c >> 7);
    q = q < 0 ? (int16_t)-q : q;
    p->cost[k] += t->est[2 * q + (bin == (c >= 0))];
    if (!bin) {
        f = (int16_t)-f;
        s = (int16_t)-s;
    }
    f = (int16_t)(f + ((nnc_adapt_step((int16_t)(16 + (f >> 3))) * t->mul_f[k]) >> 7));
    s = (int16_t)(s + ((nnc_adapt_step((int16_t)(16 + (s >> 7))) * t->mul_s[k]) >> 7));
    p->f[k] = bin ? f : (int16_t)-f;
    p->s[k] = bin ? s : (int16_t)-s;
}

/* NNC_PRICER_SCALAR / NNC_PRICER_GENERIC force the scalar or the portable vector code (tests) */
#if !defined(NNC_PRICER_SCALAR) && (defined(__SSE2__) || defined(_M_X64) || defined(__GNUC__) || defined(__clang__))

#if !defined(NNC_PRICER_GENERIC) && (defined(__SSE2__) || defined(_M_X64))
#include <emmintrin.h>
typedef __m128i nnc_v8;
#define NNC_LOAD(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define NNC_STORE(p, v) _mm_storeu_si128((__m128i *)(void *)(p), (v))
#define NNC_SET1(x) _mm_set1_epi16((short)(x))
#define NNC_ADD(a, b) _mm_add_epi16((a), (b))
#define NNC_SUB(a, b) _mm_sub_epi16((a), (b))
#define NNC_MUL(a, b) _mm_mullo_epi16((a), (b))
#define NNC_MAX(a, b) _mm_max_epi16((a), (b))
#define NNC_SRA(a, n) _mm_srai_epi16((a), (n))
#define NNC_SLL(a, n) _mm_slli_epi16((a), (n))
#define NNC_XOR(a, b) _mm_xor_si128((a), (b))
#define NNC_ANDNOT(m, a) _mm_andnot_si128((m), (a))
#define NNC_EQ(a, b) _mm_cmpeq_epi16((a), (b))
#else
typedef int16_t nnc_v8 __attribute__((vector_size(16)));
static inline nnc_v8 nnc_vmax_generic(nnc_v8 a, nnc_v8 b)
{
    nnc_v8 m = a > b;
    return (a & m) | (b & ~m);
}
#define NNC_LOAD(p) ({ nnc_v8 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define NNC_STORE(p, v) do { nnc_v8 v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
#define NNC_SET1(x) ((nnc_v8){0} + (int16_t)(x))
#define NNC_ADD(a, b) ((a) + (b))
#define NNC_SUB(a, b) ((a) - (b))
#define NNC_MUL(a, b) ((a) * (b))
#define NNC_MAX(a, b) nnc_vmax_generic((a), (b))
#define NNC_SRA(a, n) ((a) >> (n))
#define NNC_SLL(a, n) ((a) << (n))
#define NNC_XOR(a, b) ((a) ^ (b))
#define NNC_ANDNOT(m, a) (~(m) & (a))
#define NNC_EQ(a, b) ((a) == (b))
#endif

/* ADAPT[16 + (x >> sh)] per lane (x >> sh is -16 ... 15) */
static inline nnc_v8 nnc_vadapt_step(nnc_v8 x, int sh)
{
    nnc_v8 i = NNC_ADD(NNC_SRA(x, sh), NNC_SET1(16));
    nnc_v8 a = NNC_SUB(NNC_SET1(2512), NNC_MUL(i, NNC_SET1(224)));
    nnc_v8 b = NNC_SUB(NNC_SET1(1424), NNC_MUL(i, NNC_SET1(96)));
    nnc_v8 c = NNC_SUB(NNC_SET1(1040), NNC_SLL(i, 6));
    nnc_v8 r = NNC_MAX(NNC_MAX(a, b), NNC_MAX(c, NNC_SET1(64)));
    return NNC_ANDNOT(NNC_EQ(i, NNC_SET1(31)), r);
}

static inline void nnc_price_bin(nnc_pricer *p, const nnc_pricer_tables *t, int bin)
{
    nnc_v8 f = NNC_LOAD(p->f), s = NNC_LOAD(p->s), sign, c, q, neg, idx;
    int16_t lanes[8];
    int k;
    c = NNC_ADD(s, NNC_SLL(f, 4));
    q = NNC_SRA(c, 7);
    neg = NNC_SRA(q, 15);                            /* -1 where C < 0 */
    q = NNC_SUB(NNC_XOR(q, neg), neg);               /* |C >> 7| */
    /* 2 q + match, match = (bin == (C >= 0)): 1 + neg for bin 1, -neg for bin 0 */
    idx = bin ? NNC_ADD(NNC_ADD(q, q), NNC_ADD(NNC_SET1(1), neg)) : NNC_SUB(NNC_ADD(q, q), neg);
    NNC_STORE(lanes, idx);
    sign = NNC_SET1(bin ? 0 : -1);                   /* negate for bin 0: (x ^ -1) + 1 */
    f = NNC_SUB(NNC_XOR(f, sign), sign);
    s = NNC_SUB(NNC_XOR(s, sign), sign);
    f = NNC_ADD(f, NNC_SRA(NNC_MUL(nnc_vadapt_step(f, 3), NNC_LOAD(t->mul_f)), 7));
    s = NNC_ADD(s, NNC_SRA(NNC_MUL(nnc_vadapt_step(s, 7), NNC_LOAD(t->mul_s)), 7));
    f = NNC_SUB(NNC_XOR(f, sign), sign);
    s = NNC_SUB(NNC_XOR(s, sign), sign);
    NNC_STORE(p->f, f);
    NNC_STORE(p->s, s);
    for (k = 0; k < 8; k++)
        p->cost[k] += t->est[lanes[k]];
    nnc_price_set(p, t, 8, bin);
}

#else

static inline void nnc_price_bin(nnc_pricer *p, const nnc_pricer_tables *t, int bin)
{
    int k;
    for (k = 0; k < NNC_PRICER_SETS; k++)
        nnc_price_set(p, t, k, bin);
}

#endif

#endif
