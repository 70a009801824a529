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
#include <stdlib.h>
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
 *
 * With AVX-512 (and rows that step by one at most between neighbouring distances, as SEW-D's) the
 * tables are not gathered: the rows of 32 neighbouring distances lie in a window of 32, read at once
 * and permuted (window_values). For c2p those are 32 keys of one query; for p2c, whose rows differ
 * per key, 32 queries of one key, transposed 16 keys at a time into the query-major sums. Both
 * gathers had taken about half of the kernel's time (SEW-D-mid at 30 s: one layer's kernel 2.66 ms,
 * 1.72 without the p2c reads, 2.18 without the c2p reads; 2-core Xeon with AMX, 2 threads); the
 * windows gave 1.51x at 750 frames, 1.13x at 249, the same results bit for bit.
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

/* 0 turns the AVX-512 path's windows off (the tables gathered, as on other CPUs): for tests and
 * comparisons */
int position_softmax_windows = 1;

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define WINDOWS 1

/* Whether rows_of falls by zero or one row at each step (the row of a distance grows with it, and
 * log buckets by less than one bucket per frame where max_position - 1 exceeds about e * buckets / 2,
 * as in SEW-D's 256 / 512): then the rows of 32 neighbouring distances lie in a window of 32 rows that
 * starts at the smallest distance's, which the AVX-512 path below reads at once. */
static int steps_of_one(const int32_t *rows_of, int64_t L) {
    for (int64_t k = 1; k < 2 * L - 1; k++)
        if (rows_of[k - 1] - rows_of[k] < 0 || rows_of[k - 1] - rows_of[k] > 1) return 0;
    return 1;
}


/* The 32 bf16 values table[index[0..31]] where the indices lie in [index_min, index_min + 31] and
 * table has `rows` readable values: one masked load of the window and one permutation, where a
 * gather took two 16-wide gathers (the table reads were the kernel's costliest step). */
static inline __m512i window_values(const uint16_t *table, int64_t rows, __m512i index, int32_t index_min) {
    const int64_t left = rows - index_min;
    const __mmask32 readable = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
    const __m512i window = _mm512_maskz_loadu_epi16(readable, table + index_min);
    return _mm512_permutexvar_epi16(_mm512_sub_epi16(index, _mm512_set1_epi16((short)index_min)), window);
}

/* fp32 values of the low / high 16 bf16 values of a vector */
static inline __m512 bf16_low(__m512i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), 16));
}
static inline __m512 bf16_high(__m512i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)), 16));
}

/* r[w] <- column w of the 16 x 16 matrix of 32-bit words whose rows are r[0..15] */
static inline void transpose_words(__m512i r[16]) {
    __m512i t[16];
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) { /* each 128-bit lane: a 4 x 4 block transposed */
        r[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        r[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        r[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        r[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    for (int m = 0; m < 4; m++) { /* the lanes: lane k of column 4l + m is lane l of r[4k + m] */
        const __m512i a = _mm512_shuffle_i32x4(r[m], r[4 + m], 0x44);
        const __m512i b = _mm512_shuffle_i32x4(r[m], r[4 + m], 0xEE);
        const __m512i c = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], 0x44);
        const __m512i d = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], 0xEE);
        t[m] = _mm512_shuffle_i32x4(a, c, 0x88);
        t[4 + m] = _mm512_shuffle_i32x4(a, c, 0xDD);
        t[8 + m] = _mm512_shuffle_i32x4(b, d, 0x88);
        t[12 + m] = _mm512_shuffle_i32x4(b, d, 0xDD);
    }
    for (int k = 0; k < 16; k++) r[k] = t[k];
}

/* sum_i[j] = scores_i[j] + c2p_i[row[j]] for the keys [j0, j1) of query i, 32 keys per step;
 * `forward` is rows_of as 16-bit values, from row(i - j0) on. Returns where it stopped. */
static inline int64_t add_content_to_position(float *sum_i, const uint16_t *scores_i, const uint16_t *c2p_i,
                                              const int16_t *forward, int64_t rows, int64_t j0, int64_t j1) {
    int64_t j = j0;
    for (; j + 32 <= j1; j += 32) {
        const __m512i index = _mm512_loadu_si512(forward + (j - j0));
        /* row(i - j) falls as j rises: the last of the 32 is the window's first row */
        const __m512i c2p = window_values(c2p_i, rows, index, forward[j - j0 + 31]);
        const __m512i scores = _mm512_loadu_si512(scores_i + j);
        _mm512_storeu_ps(sum_i + j, _mm512_add_ps(bf16_low(scores), bf16_low(c2p)));
        _mm512_storeu_ps(sum_i + j + 16, _mm512_add_ps(bf16_high(scores), bf16_high(c2p)));
    }
    return j;
}

/* sums[t][j] += p2c[j, row(i0 + t - j)] for the 32 queries i0 + t and keys [j0, j1): each key's 32
 * values are one window of its p2c row (read along the queries), stored key by key and transposed
 * 16 keys at a time. `backward` is rows_of reversed as 16-bit values: backward[L - 1 + i - j] = row(i - j). */
static inline void add_position_to_content(float *sums, const uint16_t *p2c_gh, const int16_t *backward,
                                           int64_t L, int64_t rows, int64_t i0, int64_t j0, int64_t j1) {
    uint16_t columns[KEYS][QUERIES] __attribute__((aligned(64)));
    for (int64_t j = j0; j < j1; j++) {
        const int16_t *row = backward + L - 1 + i0 - j; /* row[t] = row(i0 + t - j), rising with t */
        const __m512i values = window_values(p2c_gh + j * rows, rows, _mm512_loadu_si512(row), row[0]);
        _mm512_store_si512(columns[j - j0], values);
    }
    int64_t j = j0;
    for (; j + 16 <= j1; j += 16) {
        __m512i r[16];
        for (int k = 0; k < 16; k++) r[k] = _mm512_load_si512(columns[j - j0 + k]);
        transpose_words(r); /* r[w]: queries 2w (low halves) and 2w + 1 (high halves) of the 16 keys */
        for (int w = 0; w < 16; w++) {
            float *even = sums + 2 * w * L + j, *odd = even + L;
            const __m512 low = _mm512_castsi512_ps(_mm512_slli_epi32(r[w], 16));
            const __m512 high = _mm512_castsi512_ps(_mm512_and_si512(r[w], _mm512_set1_epi32((int)0xFFFF0000u)));
            _mm512_storeu_ps(even, _mm512_add_ps(_mm512_loadu_ps(even), low));
            _mm512_storeu_ps(odd, _mm512_add_ps(_mm512_loadu_ps(odd), high));
        }
    }
    for (; j < j1; j++)
        for (int t = 0; t < QUERIES; t++) sums[t * L + j] += bf16_value(columns[j - j0][t]);
}
#endif

void position_softmax_bf16(uint16_t *restrict scores, const uint16_t *restrict c2p, const uint16_t *restrict p2c,
                           const int32_t *restrict rows_of, const uint8_t *restrict mask, float *restrict work,
                           int64_t groups, int64_t heads, int64_t length, int64_t rows, int threads) {
    const int64_t L = length;
#ifdef WINDOWS
    /* rows_of as 16-bit window indices, forward and reversed (rows < 2^15: the table has 2 * buckets) */
    int16_t *forward = position_softmax_windows && L > 0 && rows < 32768 && steps_of_one(rows_of, L)
                           ? malloc(2 * (2 * L - 1) * sizeof(int16_t)) : 0;
    int16_t *backward = forward ? forward + 2 * L - 1 : 0;
    for (int64_t k = 0; forward && k < 2 * L - 1; k++) {
        forward[k] = (int16_t)rows_of[k];
        backward[k] = (int16_t)rows_of[2 * L - 2 - k];
    }
#endif
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
                /* the sum in fp32 as (scores + c2p) + p2c, whichever way the terms are read */
#ifdef WINDOWS
                const int whole = forward && i1 - i0 == QUERIES;
#else
                const int whole = 0;
#endif
                for (int64_t i = i0; i < i1; i++) {
                    const int32_t *restrict row = rows_of + L - 1 - i; /* row[j] = row(i - j) */
                    const uint16_t *restrict c2p_i = c2p + (gh * L + i) * rows;
                    const uint16_t *restrict scores_i = scores + (gh * L + i) * L;
                    float *restrict sum_i = sums + (i - i0) * L;
                    int64_t j = j0;
#ifdef WINDOWS
                    if (forward)
                        j = add_content_to_position(sum_i, scores_i, c2p_i, forward + L - 1 - i + j0, rows, j0, j1);
#endif
                    if (whole) {
#pragma omp simd
                        for (int64_t k = j; k < j1; k++) sum_i[k] = bf16_value(scores_i[k]) + bf16_at(c2p_i, row[k]);
                    } else {
#pragma omp simd
                        for (int64_t k = j; k < j1; k++)
                            sum_i[k] = bf16_value(scores_i[k]) + bf16_at(c2p_i, row[k])
                                       + bf16_at(p2c_gh, (int32_t)k * (int32_t)rows + row[k]);
                    }
                }
#ifdef WINDOWS
                if (whole) add_position_to_content(sums, p2c_gh, backward, L, rows, i0, j0, j1);
                /* a partial tile, or a query whose 32-key steps added no p2c yet: the p2c of those keys */
                if (forward && !whole)
                    for (int64_t i = i0; i < i1; i++) {
                        const int32_t *restrict row = rows_of + L - 1 - i;
                        float *restrict sum_i = sums + (i - i0) * L;
                        const int64_t stop = j0 + (j1 - j0) / 32 * 32;
#pragma omp simd
                        for (int64_t j = j0; j < stop; j++)
                            sum_i[j] += bf16_at(p2c_gh, (int32_t)j * (int32_t)rows + row[j]);
                    }
#endif
                if (padded)
                    for (int64_t i = i0; i < i1; i++) {
                        float *restrict sum_i = sums + (i - i0) * L;
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
#ifdef WINDOWS
    free(forward);
#endif
}
