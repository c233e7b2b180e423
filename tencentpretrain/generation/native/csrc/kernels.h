/* What forward.c uses of kernels.c: the team of threads, weights and their products, q8_0 input rows. */
#ifndef TP_KERNELS_H
#define TP_KERNELS_H

#include <immintrin.h>

/* ---- the team of threads ---- */

typedef void (*task_fn)(void *ctx, int index, int count);

typedef struct team team_t;

team_t *team_new(int threads, long spin_ns);
int team_threads(const team_t *team);
void team_free(team_t *team);
/* task(ctx, i, threads) for every i, i = 0 in the calling thread; returns when all are done. */
void team_run(team_t *team, task_fn task, void *ctx);
/* The share [lo, hi) of thread `index` of `count` in `total` items, in blocks of `block`. */
void share(long total, long block, int index, int count, long *lo, long *hi);

/* ---- weights and their products ---- */

/* A weight of `out` x `in`, stored row-major (an nn.Linear weight as it is) or transposed (column-major: the
 * `column` layout of generation/weights/layout.py, stored as `in` rows of `out`). */
typedef struct {
    const float *w;
    long out, in;
    long transposed;
    const signed char *q;     /* q8_0 weights instead of w when not NULL: `out` rows of q8_blocks(in) * 32 int8, */
    const unsigned short *d;  /* and their scales, one float16 per block (out rows of q8_blocks(in)); */
    long q4;                  /* with q4 set, q4_0 weights: q holds `out` rows of q8_blocks(in) * 16 bytes */
} matrix;

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* x[i] = e^(x[i] - shift) for i < n; returns their sum. */
float exp_shifted(float *x, long n, float shift);

/* llama.cpp's q8_0: blocks of 32 values, each stored as round(v / d) in int8 with one float16 scale d = max|v| / 127
 * (rounded half away from zero, with the float32 1 / d; d = 0 for a block of zeros). A row whose length is not a
 * multiple of 32 ends in a block padded with zeros, which add nothing to the integer sums. The input rows of a
 * q8_0 product are quantised in the same way (q8_0 activations) and each block's dot product is an integer sum. */
#define Q8_BLOCK 32

static inline long q8_blocks(long n) { return (n + Q8_BLOCK - 1) / Q8_BLOCK; }

/* `rows` rows quantised to q8_0: row j at q + j * blocks * 32, its scales at d + j * blocks. */
typedef struct {
    signed char *q;
    unsigned short *d;
    long blocks;
} q8_rows;

/* The `rows` rows of n floats at x quantised to q8_0 into `out`. */
void quantize_rows_q8(const float *x, long rows, long n, const q8_rows *out);

/* Several products of the same input rows, their outputs taken as one range split between the threads. */
typedef struct {
    int n;
    const matrix *m[3];
    const float *x;
    long rows;
    float *y[3];      /* y[i] holds rows x m[i]->out */
    const q8_rows *xq; /* x quantised to q8_0, for q8_0 weights (else unused) */
} products_task;

void run_products(void *p, int index, int count);

/* h = silu(x gate^T) * (x up^T), split by columns of h; g and u hold the two products. */
typedef struct {
    const matrix *gate, *up;
    const float *x;
    long rows;
    float *g, *u, *h;
    const q8_rows *xq;
} gated_task;

void run_gated(void *p, int index, int count);

#endif
