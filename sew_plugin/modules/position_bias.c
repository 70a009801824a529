/* SEW-D's relative-position bias on the CPU: see position_bias.py.
 *
 * position_bias_f32, the fp32 bias in one pass:
 *
 *   bias[g, h, i, j] = c2p[g, h, i, row(i - j)] + p2c[g, h, j, row(i - j)]   (-FLT_MAX where mask[g, j])
 *
 * c2p and p2c are the (G, H, L, rows) position products, row(i - j) = rows_of[L - 1 - i + j] the
 * table row of a distance, mask a (G, L) byte per key or NULL, bias (G, H, L, L). The sum is the one
 * PyTorch computes (c2p + p2c in fp32), so the result is bit-identical to gathering both and adding.
 *
 * Work is split into tiles of 32 queries by 128 keys: the rows of p2c that a tile reads stay in the
 * L1 cache while its queries are written (one query at a time, all keys, read p2c column-wise and
 * ran 2-3x slower).
 */
#include <float.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define QUERIES 32
#define KEYS 128

/* The tiles both kernels walk: work item t of groups * heads * query_tiles(L) is the (group, head)
 * gh and its queries [i0, i1); each is then walked by KEYS keys at a time, up to L. */
typedef struct {
    int64_t gh, i0, i1;
} Tile;

static inline int64_t query_tiles(int64_t L) { return (L + QUERIES - 1) / QUERIES; }

static inline Tile tile_at(int64_t t, int64_t L) {
    const int64_t i0 = (t % query_tiles(L)) * QUERIES;
    const Tile tile = {t / query_tiles(L), i0, i0 + QUERIES < L ? i0 + QUERIES : L};
    return tile;
}

static inline int64_t keys_end(int64_t j0, int64_t L) { return j0 + KEYS < L ? j0 + KEYS : L; }

void position_bias_f32(const float *restrict c2p, const float *restrict p2c, const int32_t *restrict rows_of,
                       const uint8_t *restrict mask, float *restrict bias,
                       int64_t groups, int64_t heads, int64_t length, int64_t rows, int threads) {
    const int64_t L = length;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < groups * heads * query_tiles(L); t++) {
        const Tile tile = tile_at(t, L);
        const int64_t gh = tile.gh;
        const float *restrict p2c_gh = p2c + gh * L * rows;
        const uint8_t *restrict padded = mask ? mask + (gh / heads) * L : 0;
        for (int64_t j0 = 0; j0 < L; j0 += KEYS) {
            const int64_t j1 = keys_end(j0, L);
            for (int64_t i = tile.i0; i < tile.i1; i++) {
                const int32_t *restrict row = rows_of + L - 1 - i;  /* row[j] = row(i - j) */
                const float *restrict c2p_i = c2p + (gh * L + i) * rows;
                float *restrict bias_i = bias + (gh * L + i) * L;
#pragma omp simd
                for (int64_t j = j0; j < j1; j++)
                    bias_i[j] = c2p_i[row[j]] + p2c_gh[(int32_t)j * (int32_t)rows + row[j]];
                if (padded)
                    for (int64_t j = j0; j < j1; j++)
                        if (padded[j]) bias_i[j] = -FLT_MAX;
            }
        }
    }
}

/* position_softmax_bf16, the bf16 attention probabilities with the bias in one pass:
 *
 *   scores[gh, i, :] <- softmax_j(scores[gh, i, j] + c2p[gh, i, row(i - j)] + p2c[gh, j, row(i - j)])
 *
 * in place over the (G * H, L, L) Q.K^T products, padded keys left out (probability 0; uniform where
 * every key is padded). The sum, the exponentials and their total are fp32; each probability is rounded
 * to bf16 once. Without the kernel, PyTorch writes and reads (L, L) tensors about ten times between the
 * gathers, the sum, the products and the softmax; here the scores are read and written once.
 *
 * Tiles of 32 queries by 128 keys as above; each thread's 32 x L fp32 rows (its part of work, handed
 * in: `work`) then get their softmax while still in the caches. c2p and p2c must have one readable
 * element past their end (bf16_at).
 */
static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* p[k] as fp32: the 32-bit word at p + k with its upper half (p[k + 1]) dropped. x86 gathers 32-bit
 * words, not 16-bit ones: this lets the compiler vectorize the table reads. Reads p[k + 1]. */
static inline float bf16_at(const uint16_t *p, int32_t k) {
    uint32_t u;
    memcpy(&u, p + k, 4);
    u <<= 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t bf16_rounded(float f) { /* to nearest, ties to even; probabilities are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* a * b + c, rounded once where the CPU has fused multiply-adds (-march=native builds on x86 since
 * 2013), else twice: the build decides, not the compiler's contraction (kernels.FLAG_SETS turns that
 * off). Fused, the exponential below ran 1.5x faster (2-core Xeon with AMX, one thread). */
#ifdef __FMA__
#define MUL_ADD(a, b, c) __builtin_fmaf(a, b, c)
#else
#define MUL_ADD(a, b, c) ((a) * (b) + (c))
#endif

/* e^x for x <= 0 to 3.01 ulp at worst (2.74 with fused multiply-adds; checked at every fp32 value in
 * [-87, 0]), as 2^n e^r with |r| <= ln(2) / 2 and e^r by its degree-6 Taylor
 * polynomial; 0 below -87, near where e^x turns subnormal (-87.3; the product with V slows down on
 * those). The rounding of x / ln 2 by adding and subtracting 1.5 * 2^23 needs IEEE arithmetic: the
 * kernels are built without fast-math (kernels.FLAG_SETS). */
static inline float exp_nonpositive(float x) {
    const int underflow = x < -87.0f;
    x = underflow ? 0.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    const float r = MUL_ADD(n, -1.428606765330187045e-06f, MUL_ADD(n, -0.693145751953125f, x)); /* ln 2 in two parts */
    float p = 1.0f / 720;
    p = MUL_ADD(p, r, 1.0f / 120);
    p = MUL_ADD(p, r, 1.0f / 24);
    p = MUL_ADD(p, r, 1.0f / 6);
    p = MUL_ADD(p, r, 0.5f);
    p = MUL_ADD(p, r, 1.0f);
    p = MUL_ADD(p, r, 1.0f);
    const int32_t bits = ((int32_t)n + 127) << 23; /* 2^n */
    float scale;
    memcpy(&scale, &bits, 4);
    return underflow ? 0.0f : p * scale;
}

const int position_softmax_queries = QUERIES; /* rows of `work` per thread: QUERIES x L floats */

void position_softmax_bf16(uint16_t *restrict scores, const uint16_t *restrict c2p, const uint16_t *restrict p2c,
                           const int32_t *restrict rows_of, const uint8_t *restrict mask, float *restrict work,
                           int64_t groups, int64_t heads, int64_t length, int64_t rows, int threads) {
    const int64_t L = length;
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        float *restrict sums = work + (int64_t)omp_get_thread_num() * QUERIES * L; /* (32, L) */
#else
        float *restrict sums = work;
#endif
#pragma omp for schedule(static)
        for (int64_t t = 0; t < groups * heads * query_tiles(L); t++) {
            const Tile tile = tile_at(t, L);
            const int64_t gh = tile.gh, i0 = tile.i0, i1 = tile.i1;
            const uint16_t *restrict p2c_gh = p2c + gh * L * rows;
            const uint8_t *restrict padded = mask ? mask + (gh / heads) * L : 0;
            for (int64_t j0 = 0; j0 < L; j0 += KEYS) {
                const int64_t j1 = keys_end(j0, L);
                for (int64_t i = i0; i < i1; i++) {
                    const int32_t *restrict row = rows_of + L - 1 - i; /* row[j] = row(i - j) */
                    const uint16_t *restrict c2p_i = c2p + (gh * L + i) * rows;
                    const uint16_t *restrict scores_i = scores + (gh * L + i) * L;
                    float *restrict sum_i = sums + (i - i0) * L;
#pragma omp simd
                    for (int64_t j = j0; j < j1; j++)
                        sum_i[j] = bf16_value(scores_i[j]) + bf16_at(c2p_i, row[j])
                                   + bf16_at(p2c_gh, (int32_t)j * (int32_t)rows + row[j]);
                    if (padded)
#pragma omp simd
                        for (int64_t j = j0; j < j1; j++)
                            sum_i[j] = padded[j] ? -FLT_MAX : sum_i[j];
                }
            }
            for (int64_t i = i0; i < i1; i++) {
                float *restrict sum_i = sums + (i - i0) * L;
                uint16_t *restrict out = scores + (gh * L + i) * L;
                float top = -FLT_MAX, total = 0.0f;
#pragma omp simd reduction(max : top)
                for (int64_t j = 0; j < L; j++)
                    top = sum_i[j] > top ? sum_i[j] : top;
#pragma omp simd reduction(+ : total)
                for (int64_t j = 0; j < L; j++) {
                    sum_i[j] = exp_nonpositive(sum_i[j] - top);
                    total += sum_i[j];
                }
                const float inverse = 1.0f / total;
#pragma omp simd
                for (int64_t j = 0; j < L; j++)
                    out[j] = bf16_rounded(sum_i[j] * inverse);
            }
        }
    }
}
