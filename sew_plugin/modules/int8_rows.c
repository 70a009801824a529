/* Int8Linear's per-row quantization and its dequantization, each in one pass (CPU): see int8_linear.py.
 *
 *   quantize_rows:  scale[m] = max(max_k |x[m, k]|, FLT_MIN) / 127,  q[m, k] = round(x[m, k] / scale[m])
 *   dequantize_rows: out[m, n] = product[m, n] * weight_scale[n] * scale[m] + bias[n]
 *   scale_rows:      out[m, n] = y[m, n] * scale[m] + bias[n], y = product * weight_scale from oneDNN
 *
 * The same operations in the same order as Int8Linear's PyTorch path, each rounded as there (built
 * with -ffp-contract=off: no fused multiply-add), so finite inputs give bit-identical results; a row
 * with a NaN or an infinity gets a NaN scale and no finite output, as there. PyTorch's path makes two
 * passes over x and three over the (m, n) output, each a separate kernel.
 *
 * Row m of x starts `stride` floats after row m - 1: rows may overlap (an int8 convolution's windows,
 * Int8Conv1d); q is (rows, cols), contiguous.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

void quantize_rows(const float *restrict x, int8_t *restrict q, float *restrict scale, int64_t rows, int64_t cols,
                   int64_t stride, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t m = 0; m < rows; m++) {
        const float *restrict x_m = x + m * stride;
        int8_t *restrict q_m = q + m * cols;
        float top = 0.0f, poison = 0.0f; /* poison: NaN if the row holds a NaN or an infinity, else 0 */
#pragma omp simd reduction(max : top) reduction(+ : poison)
        for (int64_t k = 0; k < cols; k++) {
            top = fabsf(x_m[k]) > top ? fabsf(x_m[k]) : top;
            poison += x_m[k] * 0.0f;
        }
        top += poison;
        const float s = (top > FLT_MIN || top != top ? top : FLT_MIN) / 127.0f;
        scale[m] = s;
#pragma omp simd
        for (int64_t k = 0; k < cols; k++) { /* to nearest, ties to even, as torch.round; NaN to 0 */
            const float v = nearbyintf(x_m[k] / s);
            q_m[k] = v == v ? (int8_t)v : 0;
        }
    }
}

void dequantize_rows(const int32_t *restrict product, const float *restrict scale, const float *restrict weight_scale,
                     const float *restrict bias, float *restrict out, int64_t rows, int64_t cols, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t m = 0; m < rows; m++) {
        const int32_t *restrict p_m = product + m * cols;
        float *restrict out_m = out + m * cols;
        const float s = scale[m];
        if (bias) {
#pragma omp simd
            for (int64_t n = 0; n < cols; n++)
                out_m[n] = (float)p_m[n] * weight_scale[n] * s + bias[n];
        } else {
#pragma omp simd
            for (int64_t n = 0; n < cols; n++)
                out_m[n] = (float)p_m[n] * weight_scale[n] * s;
        }
    }
}

/* scale_rows: out[m, n] = y[m, n] * scale[m] + bias[n], where y is oneDNN's product already times
 * weight_scale (Int8Linear's packed path): the rest of dequantize_rows, in the same order, so the
 * result is the same bit for bit. out may be y. */
void scale_rows(const float *y, const float *restrict scale, const float *restrict bias, float *out, int64_t rows,
                int64_t cols, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t m = 0; m < rows; m++) {
        const float *y_m = y + m * cols;
        float *out_m = out + m * cols;
        const float s = scale[m];
        if (bias) {
#pragma omp simd
            for (int64_t n = 0; n < cols; n++)
                out_m[n] = y_m[n] * s + bias[n];
        } else {
#pragma omp simd
            for (int64_t n = 0; n < cols; n++)
                out_m[n] = y_m[n] * s;
        }
    }
}
