/* deepzip's sparse matrix x dense kernel for pruned (and weight-shared) Linear / Conv2d layers.
 *
 * Why hand-written: at AlexNet's fc6 / fc7 shapes with 9% of the weights kept, torch's sparse CSR kernel ran only
 * 1.66x / 2.03x faster than dense torch at batch 1 (1 thread), scipy.sparse 2.16x / 2.75x, a numba loop 1.36x /
 * 1.68x; Deep Compression's CPU figure is 3x. The layer is bound by the bytes it streams per kept weight, so this
 * kernel reads the paper's own layout: per kept weight an 8-bit *relative* column index (the step from the previous
 * kept column of the row; a gap over 255 is bridged by filler entries whose value is zero) and either a float32
 * value or an 8/16-bit index into the layer's codebook: 2 bytes per kept weight for a 256-entry codebook, against 8
 * in torch's int32-column float32 CSR. benchmarks/inference.py has the figures.
 *
 * Layout (rows = out_features, B = batch):
 *   rowptr[rows + 1] int32, step[entries] uint8, value[entries] (float32 | uint8 / uint16 codebook index),
 *   codebook[K] float32, x[in_features * B] float32 (feature-major: the B inputs of one feature side by side, so a
 *   kept weight reads one contiguous run of B floats), y[rows * B] float32 (written, feature-major too).
 * The caller (deepzip/_spkernel.py) validates everything once before the first call: rowptr starts at 0, never
 * decreases and ends at the entry count; per row the steps add up to less than in_features; every codebook index is
 * below K. Nothing here checks bounds again.
 *
 * Built by setup.py as an optional extension with portable flags (-O3, no -march): the loops are scalar gathers
 * plus, for B > 1, a B-wide multiply-add that the compiler vectorises (baseline SIMD, or AVX2 + FMA where the CPU
 * has them, chosen at run time). Loaded with ctypes
 * (which releases the GIL during the call); PyInit__spmv only satisfies linkers that want it exported.
 */
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER)
#define RESTRICT __restrict
#define EXPORT __declspec(dllexport)
#else
#define RESTRICT __restrict__
#define EXPORT __attribute__((visibility("default")))
#endif

#define DZ_KERNEL(NAME, ATTR, VT, VAL, LOADW, VALW, PF)                                                                      \
    ATTR static void NAME(int64_t rows, const int32_t *RESTRICT rowptr, const uint8_t *RESTRICT step,                  \
                     const VT *RESTRICT v, const float *RESTRICT cb, const float *RESTRICT x, float *RESTRICT y,  \
                     int64_t batch) {                                                                             \
        (void)cb;                                                                                                 \
        if (batch == 1) { /* four partial sums: independent multiply-adds in flight while the gathers wait */    \
            /* float32 values of a big layer (17 MB at fc6) stream from L3 / memory: prefetching them ~1 KB ahead \
             * ran fc6 ~1.3x faster here, fc7 (7.5 MB) and fc8 ~5% slower, hence the size threshold */            \
            const int pf = PF && rowptr[rows] >= (1 << 21);                                                       \
            for (int64_t r = 0; r < rows; r++) {                                                                  \
                float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;                                                 \
                int64_t k = rowptr[r];                                                                            \
                const int64_t end = rowptr[r + 1];                                                                \
                const float *xc = x;                                                                              \
                /* eight kept weights a pass: their steps (and uint8 indices) read as one 64-bit word each, their \
                 * offsets from xc summed apart from it, so the loop-carried chain is one add per eight weights    \
                 * and there are two loads per weight, not four (fc6: ~1.7 ms against ~2.2 ms one byte at a time) */ \
                for (; k + 8 <= end; k += 8) {                                                                    \
                    uint64_t sw;                                                                                  \
                    memcpy(&sw, step + k, 8);                                                                     \
                    LOADW(k);                                                                                     \
                    if (pf) {                                                                                     \
                        DZ_PREFETCH(v, k + 256);                                                                  \
                        DZ_PREFETCH(step, k + 256);                                                               \
                    }                                                                                             \
                    const int64_t d0 = BYTE(sw, 0), d1 = d0 + BYTE(sw, 1), d2 = d1 + BYTE(sw, 2);                 \
                    const int64_t d3 = d2 + BYTE(sw, 3), d4 = d3 + BYTE(sw, 4), d5 = d4 + BYTE(sw, 5);            \
                    const int64_t d6 = d5 + BYTE(sw, 6), d7 = d6 + BYTE(sw, 7);                                   \
                    s0 += VALW(k, 0) * xc[d0];                                                                    \
                    s1 += VALW(k, 1) * xc[d1];                                                                    \
                    s2 += VALW(k, 2) * xc[d2];                                                                    \
                    s3 += VALW(k, 3) * xc[d3];                                                                    \
                    s0 += VALW(k, 4) * xc[d4];                                                                    \
                    s1 += VALW(k, 5) * xc[d5];                                                                    \
                    s2 += VALW(k, 6) * xc[d6];                                                                    \
                    s3 += VALW(k, 7) * xc[d7];                                                                    \
                    xc += d7;                                                                                     \
                }                                                                                                 \
                for (; k < end; k++) {                                                                            \
                    xc += step[k];                                                                                \
                    s0 += VAL(k) * *xc;                                                                           \
                }                                                                                                 \
                y[r] = (s0 + s1) + (s2 + s3);                                                                     \
            }                                                                                                     \
            return;                                                                                               \
        }                                                                                                         \
        for (int64_t r = 0; r < rows; r++) { /* y[r, :] = sum over the row's kept weights of w * x[col, :] */     \
            float *RESTRICT yr = y + r * batch;                                                                   \
            for (int64_t b = 0; b < batch; b++) yr[b] = 0.0f;                                                     \
            int64_t k = rowptr[r];                                                                                \
            const int64_t end = rowptr[r + 1];                                                                    \
            const float *xc = x;                                                                                  \
            for (; k + 4 <= end; k += 4) { /* four kept weights per pass over y[r, :] */                          \
                const float *x0 = xc + (int64_t)step[k] * batch, *x1 = x0 + (int64_t)step[k + 1] * batch;         \
                const float *x2 = x1 + (int64_t)step[k + 2] * batch;                                              \
                xc = x2 + (int64_t)step[k + 3] * batch;                                                           \
                const float v0 = VAL(k), v1 = VAL(k + 1), v2 = VAL(k + 2), v3 = VAL(k + 3);                       \
                const float *x3 = xc;                                                                             \
                for (int64_t b = 0; b < batch; b++)                                                               \
                    yr[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b]);                               \
            }                                                                                                     \
            for (; k < end; k++) {                                                                                \
                xc += (int64_t)step[k] * batch;                                                                   \
                const float v0 = VAL(k);                                                                          \
                for (int64_t b = 0; b < batch; b++) yr[b] += v0 * xc[b];                                          \
            }                                                                                                     \
        }                                                                                                         \
    }

#define VAL_F32(k) v[k]
#define VAL_CB(k) cb[v[k]]
/* byte i (0 = first in memory) of a 64-bit word read from memory */
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define BYTE(w, i) ((int64_t)(((w) >> (8 * (7 - (i)))) & 255u))
#else
#define BYTE(w, i) ((int64_t)(((w) >> (8 * (i))) & 255u))
#endif
#define NOLOAD(k) (void)0
/* a hint to fetch element OFF of array P (a prefetch never faults, even past the array's end) */
#if defined(__GNUC__) || defined(__clang__)
#define DZ_PREFETCH(P, OFF) __builtin_prefetch((const void *)((uintptr_t)(P) + (uintptr_t)(OFF) * sizeof(*(P))), 0, 0)
#else
#define DZ_PREFETCH(P, OFF) (void)0
#endif
#define LOADW_U8(k)                                                                                                \
    uint64_t vw;                                                                                                    \
    memcpy(&vw, v + (k), 8)
#define VALW_U8(k, i) cb[BYTE(vw, i)]
#define VALW_F32(k, i) v[(k) + (i)]
#define VALW_CB(k, i) cb[v[(k) + (i)]]
#define ARGS int64_t rows, const int32_t *rowptr, const uint8_t *step, const void *v, const float *cb, const float *x, \
             float *y, int64_t batch

/* Each kernel is compiled twice on x86-64 with GCC / clang: for the baseline (SSE2) and for AVX2 + FMA, picked at
 * run time by what the CPU supports. The batched loop runs 2-3x faster with 8-wide fused multiply-adds (measured on
 * this project's benchmark machine); the batch-1 loop (scalar gathers) ran ~15% slower in the AVX2 build there, so
 * batch 1 always takes the baseline code. The shipped build's flags stay portable. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define DZ_DISPATCH 1
#define AVX2 __attribute__((target("avx2,fma")))
static int has_avx2(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}
#else
#define DZ_DISPATCH 0
#define AVX2
static int has_avx2(void) { return 0; }
#endif

#define DZ_EXPORT(NAME, VT, VAL, LOADW, VALW, PF)                                                                            \
    DZ_KERNEL(NAME##_base, , VT, VAL, LOADW, VALW, PF)                                                             \
    DZ_KERNEL(NAME##_avx2, AVX2, VT, VAL, LOADW, VALW, PF)                                                         \
    EXPORT void NAME(ARGS) {                                                                                        \
        if (DZ_DISPATCH && batch > 1 && has_avx2())                                                                \
            NAME##_avx2(rows, rowptr, step, (const VT *)v, cb, x, y, batch);                                        \
        else                                                                                                        \
            NAME##_base(rows, rowptr, step, (const VT *)v, cb, x, y, batch);                                        \
    }

DZ_EXPORT(dz_spmm_f32, float, VAL_F32, NOLOAD, VALW_F32, 1)
DZ_EXPORT(dz_spmm_u8, uint8_t, VAL_CB, LOADW_U8, VALW_U8, 0)
DZ_EXPORT(dz_spmm_u16, uint16_t, VAL_CB, NOLOAD, VALW_CB, 0)

/* Which code path runs here: 2 = AVX2 + FMA, 1 = baseline. */
EXPORT int64_t dz_spmv_isa(void) { return has_avx2() ? 2 : 1; }

/* 1 when loaded; lets the loader check it found this library and not another of the same name. */
EXPORT int64_t dz_spmv_abi(void) { return 1; }

EXPORT void *PyInit__spmv(void) { return 0; }
