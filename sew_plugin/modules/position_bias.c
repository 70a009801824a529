/* SEW-D's relative-position bias in one pass (fp32, CPU): see position_bias.py.
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

#define QUERIES 32
#define KEYS 128

void position_bias_f32(const float *restrict c2p, const float *restrict p2c, const int32_t *restrict rows_of,
                       const uint8_t *restrict mask, float *restrict bias,
                       int64_t groups, int64_t heads, int64_t length, int64_t rows, int threads) {
    const int64_t L = length, query_tiles = (L + QUERIES - 1) / QUERIES;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < groups * heads * query_tiles; t++) {
        const int64_t gh = t / query_tiles, i0 = (t % query_tiles) * QUERIES;
        const int64_t i1 = i0 + QUERIES < L ? i0 + QUERIES : L;
        const float *restrict p2c_gh = p2c + gh * L * rows;
        const uint8_t *restrict padded = mask ? mask + (gh / heads) * L : 0;
        for (int64_t j0 = 0; j0 < L; j0 += KEYS) {
            const int64_t j1 = j0 + KEYS < L ? j0 + KEYS : L;
            for (int64_t i = i0; i < i1; i++) {
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
