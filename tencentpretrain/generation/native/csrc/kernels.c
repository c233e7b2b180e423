/* The kernels of forward.c's passes: a team of threads, and the products of several input rows by a float32 (row-
 * or column-major), q8_0 or q4_0 weight, split between the threads by output rows.
 *
 * A pass reads every weight once for all its rows, so at a few rows it is bound by memory bandwidth, which a second
 * core adds to, and with a prompt chunk by arithmetic, which a second core doubles. Each large product is split
 * between the threads by output rows; the workers spin between tasks (a hand-off costs about a microsecond, not the
 * tens of microseconds of a wake-up), yield the core now and then while they spin (so that an oversubscribed
 * machine still makes progress) and sleep after `spin_ns` without work. Every product sums in one order whatever
 * kernel, thread or group of rows computes it, so a row's results never depend on the rows beside it.
 *
 * Compiled in several builds by generation/native/build.py: with AVX2 and FMA, and with AVX-512F too (__AVX512F__),
 * where the products of several input rows multiply two rows at once in 512-bit vectors, each row in its own eight
 * lanes, and so sum in exactly the order of the AVX2 build: the two builds compute the same bits. */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

/* ---- the team of threads ---- */

struct team {
    int threads;
    long spin_ns;             /* how long an idle worker spins before it sleeps */
    pthread_t *workers;
    atomic_ulong generation;  /* bumped once per task */
    atomic_int pending;       /* workers still running the current task */
    atomic_int sleeping;
    atomic_int quit;
    task_fn task;
    void *ctx;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

typedef struct {
    team_t *team;
    int index;
} worker_arg;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int idle(team_t *team, unsigned long seen) {
    return atomic_load(&team->generation) == seen && !atomic_load(&team->quit);
}

static void *worker(void *p) {
    worker_arg *arg = (worker_arg *)p;
    team_t *team = arg->team;
    int index = arg->index;
    free(arg);
    unsigned long seen = 0; /* the generation the team started with (a task may be posted before we get here) */
    for (;;) {
        long deadline = now_ns() + team->spin_ns;
        for (int spins = 1; idle(team, seen); spins++) {
            _mm_pause();
            if ((spins & 1023) == 0) {
                if (now_ns() > deadline)
                    break;
                sched_yield(); /* a core shared with other work: let it run */
            }
        }
        if (idle(team, seen)) {
            pthread_mutex_lock(&team->lock);
            atomic_fetch_add(&team->sleeping, 1);
            while (idle(team, seen))
                pthread_cond_wait(&team->wake, &team->lock);
            atomic_fetch_sub(&team->sleeping, 1);
            pthread_mutex_unlock(&team->lock);
        }
        if (atomic_load(&team->quit))
            return NULL;
        seen = atomic_load(&team->generation);
        team->task(team->ctx, index, team->threads);
        atomic_fetch_sub(&team->pending, 1);
    }
}

team_t *team_new(int threads, long spin_ns) {
    team_t *team = calloc(1, sizeof(team_t));
    if (team == NULL)
        return NULL;
    team->threads = threads < 1 ? 1 : threads;
    team->spin_ns = spin_ns;
    pthread_mutex_init(&team->lock, NULL);
    pthread_cond_init(&team->wake, NULL);
    team->workers = calloc(team->threads, sizeof(pthread_t));
    for (int i = 1; i < team->threads; i++) {
        worker_arg *arg = malloc(sizeof(worker_arg));
        arg->team = team;
        arg->index = i;
        if (pthread_create(&team->workers[i], NULL, worker, arg) != 0) {
            free(arg);
            team->threads = i; /* run with the workers started so far */
            break;
        }
    }
    return team;
}

int team_threads(const team_t *team) { return team->threads; }

void team_free(team_t *team) {
    pthread_mutex_lock(&team->lock);
    atomic_store(&team->quit, 1);
    pthread_cond_broadcast(&team->wake);
    pthread_mutex_unlock(&team->lock);
    for (int i = 1; i < team->threads; i++)
        pthread_join(team->workers[i], NULL);
    pthread_mutex_destroy(&team->lock);
    pthread_cond_destroy(&team->wake);
    free(team->workers);
    free(team);
}

/* task(ctx, i, threads) for every i, i = 0 in the calling thread; returns when all are done. */
void team_run(team_t *team, task_fn task, void *ctx) {
    if (team->threads == 1) {
        task(ctx, 0, 1);
        return;
    }
    team->task = task;
    team->ctx = ctx;
    atomic_store(&team->pending, team->threads - 1);
    atomic_fetch_add(&team->generation, 1);
    if (atomic_load(&team->sleeping) > 0) {
        pthread_mutex_lock(&team->lock);
        pthread_cond_broadcast(&team->wake);
        pthread_mutex_unlock(&team->lock);
    }
    task(ctx, 0, team->threads);
    for (int spins = 1; atomic_load(&team->pending) > 0; spins++) {
        _mm_pause();
        if ((spins & 1023) == 0)
            sched_yield(); /* a worker waiting for a core: give it ours */
    }
}

/* The share [lo, hi) of thread `index` of `count` in `total` items, in blocks of `block`. */
void share(long total, long block, int index, int count, long *lo, long *hi) {
    long blocks = (total + block - 1) / block;
    long per = blocks / count, extra = blocks % count;
    long first = index * per + (index < extra ? index : extra);
    long n = per + (index < extra ? 1 : 0);
    *lo = first * block < total ? first * block : total;
    *hi = (first + n) * block < total ? (first + n) * block : total;
}

/* ---- one-row products ---- */




/* e^x of eight floats (Cephes' single-precision exp: x = n ln 2 + r, |r| <= ln 2 / 2, a degree-5 polynomial of r,
 * times 2^n; within 2 ulp of expf, inputs clamped to +-88.38, where expf overflows or goes subnormal). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* x[i] = e^(x[i] - shift) for i < n; returns their sum. */
float exp_shifted(float *x, long n, float shift) {
    __m256 total = _mm256_setzero_ps(), sv = _mm256_set1_ps(shift);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sv));
        _mm256_storeu_ps(x + i, e);
        total = _mm256_add_ps(total, e);
    }
    float sum = hsum(total);
    for (; i < n; i++) {
        x[i] = expf(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

/* h[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i] for i < n. */
static void swiglu(const float *g, const float *u, float *h, long n) {
    long i = 0;
    __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 sig = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(sig, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

#define MAX_ROWS 8 /* input rows of a decoding step's products: each weight row streamed once for all of them */
#ifndef ROW_TILE_BYTES
#define ROW_TILE_BYTES (384 * 1024) /* input rows multiplied in one pass over a row-major weight by rows_dot: as many
                                     * as fit in this much of L2 (128 rows of 768 floats, 48 of 2048), so the
                                     * weight streams from memory once for a 64-token chunk */
#endif

#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8 /* the products ask for the weight rows this far ahead, a cache line at a time (with several
                           * inputs the products take long enough per row that the hardware prefetcher falls behind:
                           * 7-12% faster at 4-8 rows, and at 64; one row gains nothing from it) */
#endif

int vector_bits(void) {
#ifdef __AVX512F__
    return 512;
#else
    return 256;
#endif
}

/* hsum(acc) plus wr[t] * x[t] for the columns t = c .. cols - 1 left over, one fused multiply-add each: how every
 * product kernel ends a sum. */
static inline float finish(__m256 acc, const float *wr, const float *x, long c, long cols) {
    float s = hsum(acc);
    for (; c < cols; c++)
        s = fmaf(wr[c], x[c], s);
    return s;
}

#ifdef __AVX512F__
/* The eight floats at p in both halves of a vector. */
static inline __m512 twice(const float *p) {
    return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))));
}

static inline __m256 low_half(__m512 v) { return _mm512_castps512_ps256(v); }

static inline __m256 high_half(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

/* Input rows two by two for the 512-bit kernels (NULL when out of memory: the caller then runs the 256-bit ones):
 * columns 8k .. 8k + 7 of rows 2p and 2p + 1 (`ldx` apart) side by side in the 16 floats at (p * (cols / 8) + k) *
 * 16. A vector of a pair times the same eight weights in both halves (twice) gives each row its own eight lanes,
 * summed in the order of the 256-bit kernels. Freed with free(). */
static float *pack_pairs(const float *x, long ldx, long cols, long pairs) {
    long chunks = cols / 8;
    float *packed = aligned_alloc(64, 64 * (pairs * chunks > 0 ? pairs * chunks : 1));
    if (packed == NULL)
        return NULL;
    for (long p = 0; p < pairs; p++)
        for (long k = 0; k < chunks; k++) {
            memcpy(packed + (p * chunks + k) * 16, x + 2 * p * ldx + 8 * k, 32);
            memcpy(packed + (p * chunks + k) * 16 + 8, x + (2 * p + 1) * ldx + 8 * k, 32);
        }
    return packed;
}
#endif

/* w[r, :] . x[j, :] for one weight row, in the order every product kernel sums in (eight lanes over the columns,
 * then across the lanes, then the columns left over). */
static float dot_1(const float *wr, long cols, const float *xj) {
    __m256 a = _mm256_setzero_ps();
    long c = 0;
    for (; c + 8 <= cols; c += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(wr + c), _mm256_loadu_ps(xj + c), a);
    float s = hsum(a);
    for (; c < cols; c++)
        s = fmaf(wr[c], xj[c], s);
    return s;
}

/* y[r] = w[r, :] . x for r in [lo, hi), w row-major with `cols` columns: one input row, four weight rows at once. */
static void rows_dot_1(const float *w, long cols, const float *x, float *y, long lo, long hi) {
    long r = lo;
    for (; r + 4 <= hi; r += 4) {
        const float *w0 = w + r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        long c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m256 xv = _mm256_loadu_ps(x + c);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), xv, a3);
        }
        float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
        for (; c < cols; c++) {
            s0 = fmaf(w0[c], x[c], s0);
            s1 = fmaf(w1[c], x[c], s1);
            s2 = fmaf(w2[c], x[c], s2);
            s3 = fmaf(w3[c], x[c], s3);
        }
        y[r] = s0;
        y[r + 1] = s1;
        y[r + 2] = s2;
        y[r + 3] = s3;
    }
    for (; r < hi; r++)
        y[r] = dot_1(w + r * cols, cols, x);
}

#ifdef __AVX512F__
/* rows_dot_n with the input rows in pairs (pack_pairs): half the vectors loaded and multiplied, the same sums. */
static inline __attribute__((always_inline)) void rows_dot_pairs(const float *w, long cols, const float *x,
                                                                 const float *packed, int rows, float *y, long ldy,
                                                                 long lo, long hi) {
    const int pairs = rows / 2;
    const long chunks = cols / 8;
    const float *odd = x + (rows - 1) * cols; /* the last row, alone, when `rows` is odd */
    for (long r = lo; r < hi; r++) {
        const float *wr = w + r * cols;
        __m512 acc[MAX_ROWS / 2];
        __m256 last = _mm256_setzero_ps();
        for (int p = 0; p < pairs; p++)
            acc[p] = _mm512_setzero_ps();
        const char *ahead = (const char *)(wr + PREFETCH_ROWS * cols);
        for (long k = 0; k < chunks; k++) {
            long c = 8 * k;
            if ((c & 15) == 0 && r + PREFETCH_ROWS < hi)
                _mm_prefetch(ahead + 4 * c, _MM_HINT_T0);
            __m512 wv = twice(wr + c);
            for (int p = 0; p < pairs; p++)
                acc[p] = _mm512_fmadd_ps(wv, _mm512_load_ps(packed + (p * chunks + k) * 16), acc[p]);
            if (rows & 1)
                last = _mm256_fmadd_ps(low_half(wv), _mm256_loadu_ps(odd + c), last);
        }
        for (int p = 0; p < pairs; p++) {
            y[2 * p * ldy + r] = finish(low_half(acc[p]), wr, x + 2 * p * cols, 8 * chunks, cols);
            y[(2 * p + 1) * ldy + r] = finish(high_half(acc[p]), wr, x + (2 * p + 1) * cols, 8 * chunks, cols);
        }
        if (rows & 1)
            y[(rows - 1) * ldy + r] = finish(last, wr, odd, 8 * chunks, cols);
    }
}
#endif

/* y[b, r] = w[r, :] . x[b, :] for r in [lo, hi) and `rows` (2 .. MAX_ROWS, a constant where it is inlined) input
 * rows of `cols`; y's rows are `ldy` apart. Each weight vector is loaded once for all input rows. */
static inline __attribute__((always_inline)) void rows_dot_n(const float *w, long cols, const float *x, int rows,
                                                             float *y, long ldy, long lo, long hi) {
#ifdef __AVX512F__
    float *packed = pack_pairs(x, cols, cols, rows / 2);
    if (packed != NULL) {
        rows_dot_pairs(w, cols, x, packed, rows, y, ldy, lo, hi);
        free(packed);
        return;
    }
#endif
    for (long r = lo; r < hi; r++) {
        const float *wr = w + r * cols;
        __m256 acc[MAX_ROWS];
        for (int b = 0; b < rows; b++)
            acc[b] = _mm256_setzero_ps();
        long c = 0;
        const char *ahead = (const char *)(wr + PREFETCH_ROWS * cols);
        for (; c + 8 <= cols; c += 8) {
            if ((c & 15) == 0 && r + PREFETCH_ROWS < hi)
                _mm_prefetch(ahead + 4 * c, _MM_HINT_T0);
            __m256 wv = _mm256_loadu_ps(wr + c);
            for (int b = 0; b < rows; b++)
                acc[b] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + b * cols + c), acc[b]);
        }
        for (int b = 0; b < rows; b++) {
            float s = hsum(acc[b]);
            for (long t = c; t < cols; t++)
                s = fmaf(wr[t], x[b * cols + t], s);
            y[b * ldy + r] = s;
        }
    }
}

/* y[j, r + i] = w[r + i, :] . x[j, :] for i < 4 and j < nb (1 .. 3, a constant where it is inlined): four weight
 * rows against nb input rows (`ldx` apart), 4 x nb accumulators in registers, each weight vector loaded once for
 * the nb rows. Every sum runs in the same order (eight lanes over the columns, then across the lanes, then the
 * columns left over), in whatever kernel and group it is computed: a row's result never depends on the rows
 * multiplied beside it. */
static inline __attribute__((always_inline)) void dot_4xn(const float *w, long cols, const float *x, long ldx, int nb,
                                                          float *y, long ldy, long r, const float *ahead) {
    const float *w0 = w + r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
    __m256 a0[3], a1[3], a2[3], a3[3];
    for (int j = 0; j < nb; j++)
        a0[j] = a1[j] = a2[j] = a3[j] = _mm256_setzero_ps();
    long c = 0;
    for (; c + 8 <= cols; c += 8) {
        if (ahead != NULL && (c & 15) == 0) {
            _mm_prefetch((const char *)(ahead + c), _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + cols + c), _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + 2 * cols + c), _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + 3 * cols + c), _MM_HINT_T0);
        }
        __m256 xv[3];
        for (int j = 0; j < nb; j++)
            xv[j] = _mm256_loadu_ps(x + j * ldx + c);
        __m256 wv = _mm256_loadu_ps(w0 + c);
        for (int j = 0; j < nb; j++)
            a0[j] = _mm256_fmadd_ps(wv, xv[j], a0[j]);
        wv = _mm256_loadu_ps(w1 + c);
        for (int j = 0; j < nb; j++)
            a1[j] = _mm256_fmadd_ps(wv, xv[j], a1[j]);
        wv = _mm256_loadu_ps(w2 + c);
        for (int j = 0; j < nb; j++)
            a2[j] = _mm256_fmadd_ps(wv, xv[j], a2[j]);
        wv = _mm256_loadu_ps(w3 + c);
        for (int j = 0; j < nb; j++)
            a3[j] = _mm256_fmadd_ps(wv, xv[j], a3[j]);
    }
    for (int j = 0; j < nb; j++) {
        const float *xj = x + j * ldx;
        float s0 = hsum(a0[j]), s1 = hsum(a1[j]), s2 = hsum(a2[j]), s3 = hsum(a3[j]);
        for (long t = c; t < cols; t++) {
            s0 = fmaf(w0[t], xj[t], s0);
            s1 = fmaf(w1[t], xj[t], s1);
            s2 = fmaf(w2[t], xj[t], s2);
            s3 = fmaf(w3[t], xj[t], s3);
        }
        float *yj = y + j * ldy + r;
        yj[0] = s0;
        yj[1] = s1;
        yj[2] = s2;
        yj[3] = s3;
    }
}

#ifdef __AVX512F__
#define PAIRS 4 /* input pairs dot_4xp multiplies at once: 16 accumulators, 4 inputs and a weight in registers */

/* dot_4xn for np (1 .. PAIRS, a constant where it is inlined) pairs of input rows (pack_pairs, `chunks` = cols / 8
 * vectors per pair; x: the same rows unpacked, `ldx` apart, for the columns left over): 4 x np accumulators of two
 * rows each, the same sums as dot_4xn's. */
static inline __attribute__((always_inline)) void dot_4xp(const float *w, long cols, const float *packed, long chunks,
                                                          int np, const float *x, long ldx, float *y, long ldy, long r,
                                                          const float *ahead) {
    const float *w0 = w + r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
    __m512 a0[PAIRS], a1[PAIRS], a2[PAIRS], a3[PAIRS];
    for (int p = 0; p < np; p++)
        a0[p] = a1[p] = a2[p] = a3[p] = _mm512_setzero_ps();
    for (long k = 0; k < chunks; k++) {
        long c = 8 * k;
        if (ahead != NULL && (c & 15) == 0) {
            _mm_prefetch((const char *)(ahead + c), _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + cols + c), _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + 2 * cols + c), _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + 3 * cols + c), _MM_HINT_T0);
        }
        __m512 xv[PAIRS];
        for (int p = 0; p < np; p++)
            xv[p] = _mm512_load_ps(packed + (p * chunks + k) * 16);
        __m512 wv = twice(w0 + c);
        for (int p = 0; p < np; p++)
            a0[p] = _mm512_fmadd_ps(wv, xv[p], a0[p]);
        wv = twice(w1 + c);
        for (int p = 0; p < np; p++)
            a1[p] = _mm512_fmadd_ps(wv, xv[p], a1[p]);
        wv = twice(w2 + c);
        for (int p = 0; p < np; p++)
            a2[p] = _mm512_fmadd_ps(wv, xv[p], a2[p]);
        wv = twice(w3 + c);
        for (int p = 0; p < np; p++)
            a3[p] = _mm512_fmadd_ps(wv, xv[p], a3[p]);
    }
    long c = 8 * chunks;
    for (int p = 0; p < np; p++) {
        const float *xa = x + 2 * p * ldx, *xb = xa + ldx;
        float *ya = y + 2 * p * ldy + r, *yb = ya + ldy;
        ya[0] = finish(low_half(a0[p]), w0, xa, c, cols);
        ya[1] = finish(low_half(a1[p]), w1, xa, c, cols);
        ya[2] = finish(low_half(a2[p]), w2, xa, c, cols);
        ya[3] = finish(low_half(a3[p]), w3, xa, c, cols);
        yb[0] = finish(high_half(a0[p]), w0, xb, c, cols);
        yb[1] = finish(high_half(a1[p]), w1, xb, c, cols);
        yb[2] = finish(high_half(a2[p]), w2, xb, c, cols);
        yb[3] = finish(high_half(a3[p]), w3, xb, c, cols);
    }
}

#define PAIRS_CASE(np)                                                                                            \
    case np:                                                                                                      \
        dot_4xp(w, cols, packed + p * chunks * 16, chunks, np, xt + 2 * p * cols, cols, yt + 2 * p * ldy, ldy, r, \
                p ? NULL : ahead);                                                                                \
        break;

/* rows_dot's blocks of four weight rows against a tile of n input rows, packed in pairs: PAIRS pairs at a time,
 * the last row of an odd tile by dot_4xn. */
static void rows_dot_tile(const float *w, long cols, const float *xt, const float *packed, long n, float *yt,
                          long ldy, long lo, long hi) {
    long chunks = cols / 8, pairs = n / 2, r = lo;
    for (; r + 4 <= hi; r += 4) {
        const float *ahead = r + PREFETCH_ROWS + 4 <= hi ? w + (r + PREFETCH_ROWS) * cols : NULL;
        long p = 0;
        for (; p + PAIRS <= pairs; p += PAIRS)
            dot_4xp(w, cols, packed + p * chunks * 16, chunks, PAIRS, xt + 2 * p * cols, cols, yt + 2 * p * ldy, ldy,
                    r, p ? NULL : ahead);
        switch (pairs - p) {
            PAIRS_CASE(1)
            PAIRS_CASE(2)
            PAIRS_CASE(3)
        }
        if (n & 1)
            dot_4xn(w, cols, xt + (n - 1) * cols, cols, 1, yt + (n - 1) * ldy, ldy, r, pairs ? NULL : ahead);
    }
    for (; r < hi; r++)
        for (long b = 0; b < n; b++)
            yt[b * ldy + r] = dot_1(w + r * cols, cols, xt + b * cols);
}
#endif

/* y[b, r] = w[r, :] . x[b, :] for weight rows r in [lo, hi) (row-major, `cols` columns) and `rows` input rows of
 * `cols`; y's rows are `ldy` apart. The weight is read from memory once per tile of input rows (ROW_TILE_BYTES),
 * four rows at a time, each block of four then multiplied by the tile's rows three at a time from the caches (with
 * AVX-512, eight at a time, in pairs: rows_dot_tile). */
static void rows_dot(const float *w, long cols, const float *x, long rows, float *y, long ldy, long lo, long hi) {
    long tile = ROW_TILE_BYTES / (long)sizeof(float) / cols;
    tile = tile < 24 ? 24 : tile > 192 ? 192 : tile;
    for (long b0 = 0; b0 < rows; b0 += tile) {
        long n = rows - b0 < tile ? rows - b0 : tile;
        const float *xt = x + b0 * cols;
        float *yt = y + b0 * ldy;
#ifdef __AVX512F__
        float *packed = pack_pairs(xt, cols, cols, n / 2);
        if (packed != NULL) {
            rows_dot_tile(w, cols, xt, packed, n, yt, ldy, lo, hi);
            free(packed);
            continue;
        }
#endif
        long r = lo;
        for (; r + 4 <= hi; r += 4) {
            const float *ahead = r + PREFETCH_ROWS + 4 <= hi ? w + (r + PREFETCH_ROWS) * cols : NULL;
            long b = 0;
            if (n >= 3) {
                dot_4xn(w, cols, xt, cols, 3, yt, ldy, r, ahead);
                b = 3;
            }
            for (; b + 3 <= n; b += 3)
                dot_4xn(w, cols, xt + b * cols, cols, 3, yt + b * ldy, ldy, r, NULL);
            if (n - b == 2)
                dot_4xn(w, cols, xt + b * cols, cols, 2, yt + b * ldy, ldy, r, b ? NULL : ahead);
            else if (n - b == 1)
                dot_4xn(w, cols, xt + b * cols, cols, 1, yt + b * ldy, ldy, r, b ? NULL : ahead);
        }
        for (; r < hi; r++)
            for (long b = 0; b < n; b++)
                yt[b * ldy + r] = dot_1(w + r * cols, cols, xt + b * cols);
    }
}

#define COLUMN_BLOCK 2048 /* floats of output accumulated at once by cols_axpy (in L1), over all input rows */

/* y[b, lo:hi] = sum_i x[b, i] * wt[i, lo:hi] for `rows` input rows of `in`, wt row-major with `ld` columns and
 * `in` rows (a transposed weight); y's rows are `ldy` apart. */
static inline __attribute__((always_inline)) void cols_axpy_n(const float *wt, long ld, long in, const float *x,
                                                              int rows, float *y, long ldy, long lo, long hi) {
    float acc[COLUMN_BLOCK] __attribute__((aligned(32)));
    long block = (COLUMN_BLOCK / rows) & ~7L;
    for (long c0 = lo; c0 < hi; c0 += block) {
        long n = hi - c0 < block ? hi - c0 : block;
        long n8 = n & ~7L;
        memset(acc, 0, sizeof(float) * rows * block);
        long i = 0;
        for (; i + 4 <= in; i += 4) {
            const float *w0 = wt + i * ld + c0, *w1 = w0 + ld, *w2 = w1 + ld, *w3 = w2 + ld;
            for (int b = 0; b < rows; b++) {
                const float *xb = x + b * in + i;
                __m256 x0 = _mm256_set1_ps(xb[0]), x1 = _mm256_set1_ps(xb[1]);
                __m256 x2 = _mm256_set1_ps(xb[2]), x3 = _mm256_set1_ps(xb[3]);
                float *ab = acc + b * block;
                long c = 0;
#ifdef __AVX512F__
                __m512 y0 = _mm512_set1_ps(xb[0]), y1 = _mm512_set1_ps(xb[1]);
                __m512 y2 = _mm512_set1_ps(xb[2]), y3 = _mm512_set1_ps(xb[3]);
                for (; c + 16 <= n8; c += 16) { /* sixteen columns at once: each its own sum, in the same order */
                    __m512 a = _mm512_loadu_ps(ab + c);
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + c), y0, a);
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + c), y1, a);
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + c), y2, a);
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + c), y3, a);
                    _mm512_storeu_ps(ab + c, a);
                }
#endif
                for (; c < n8; c += 8) {
                    __m256 a = _mm256_load_ps(ab + c);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), x0, a);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), x1, a);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), x2, a);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), x3, a);
                    _mm256_store_ps(ab + c, a);
                }
                for (long c = n8; c < n; c++)
                    ab[c] += w0[c] * xb[0] + w1[c] * xb[1] + w2[c] * xb[2] + w3[c] * xb[3];
            }
        }
        for (; i < in; i++)
            for (int b = 0; b < rows; b++)
                for (long c = 0; c < n; c++)
                    acc[b * block + c] += wt[i * ld + c0 + c] * x[b * in + i];
        for (int b = 0; b < rows; b++)
            memcpy(y + b * ldy + c0, acc + b * block, sizeof(float) * n);
    }
}


/* ---- q8_0 products ---- */


/* round(t) half away from zero for integral-or-not floats, exactly: floor(|t|) + floor(2 (|t| - floor(|t|))), with
 * t's sign (the gguf package's np_roundf, which is C's roundf). */
static inline __m256 round_away(__m256 t) {
    __m256 sign = _mm256_set1_ps(-0.0f), a = _mm256_andnot_ps(sign, t), f = _mm256_floor_ps(a);
    __m256 frac2 = _mm256_mul_ps(_mm256_sub_ps(a, f), _mm256_set1_ps(2.0f));
    return _mm256_or_ps(_mm256_add_ps(f, _mm256_floor_ps(frac2)), _mm256_and_ps(sign, t));
}

/* One row of n floats to q8_0 (q8_blocks(n) blocks). */
void quantize_row_q8(const float *x, long n, signed char *q, unsigned short *d) {
    long blocks = q8_blocks(n);
    for (long b = 0; b < blocks; b++) {
        float v[Q8_BLOCK];
        long m = n - b * Q8_BLOCK < Q8_BLOCK ? n - b * Q8_BLOCK : Q8_BLOCK;
        memcpy(v, x + b * Q8_BLOCK, sizeof(float) * m);
        for (long k = m; k < Q8_BLOCK; k++)
            v[k] = 0.0f;
        __m256 sign = _mm256_set1_ps(-0.0f), top = _mm256_setzero_ps();
        for (int k = 0; k < Q8_BLOCK; k += 8)
            top = _mm256_max_ps(top, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + k)));
        float lanes[8], amax = 0.0f;
        _mm256_storeu_ps(lanes, top);
        for (int k = 0; k < 8; k++)
            amax = lanes[k] > amax ? lanes[k] : amax;
        float scale = amax / 127.0f, inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
        d[b] = _cvtss_sh(scale, 0);
        for (int k = 0; k < Q8_BLOCK; k += 8) {
            int ints[8];
            __m256 t = round_away(_mm256_mul_ps(_mm256_loadu_ps(v + k), _mm256_set1_ps(inverse)));
            _mm256_storeu_si256((__m256i *)ints, _mm256_cvtps_epi32(t));
            for (int i = 0; i < 8; i++)
                q[b * Q8_BLOCK + k + i] = (signed char)ints[i];
        }
    }
}

void quantize_rows_q8(const float *x, long rows, long n, const q8_rows *out) {
    for (long j = 0; j < rows; j++)
        quantize_row_q8(x + j * n, n, out->q + j * out->blocks * Q8_BLOCK, out->d + j * out->blocks);
}

int q8_vnni(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return 1;
#else
    return 0;
#endif
}

/* The eight int32 sums of four adjacent products w[4i .. 4i + 3] . x[4i .. 4i + 3] of a block (values within
 * +-127, so no 16-bit sum saturates): VNNI's dpbusd, else AVX2's maddubs and madd, the same integers. */
static inline __m256i dot4_i8(__m256i w, __m256i x) {
    __m256i magnitude = _mm256_sign_epi8(w, w), signed_x = _mm256_sign_epi8(x, w);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, signed_x);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), _mm256_set1_epi16(1));
#endif
}

/* acc + float(sums) * (dw * dx): how every q8_0 product adds a block (a multiply, then an add, each rounded). */
static inline __m256 q8_add(__m256 acc, __m256i sums, float dw, float dx) {
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(dw * dx)));
}

/* The q8_0 and q4_0 products ask for the next tile's four weight rows, all at once, as they start a tile: without
 * it a weight streamed from memory is read at a third to a half of the bandwidth, and eight rows ahead or more is
 * slower again (A/B in one process, the 99M model's q4_0 decoding on one thread: none 228, 4 rows 345-351, 16 rows
 * 186 tok/s). */
#ifndef Q8_PREFETCH_ROWS
#define Q8_PREFETCH_ROWS 4
#endif
#ifndef Q4_PREFETCH_ROWS
#define Q4_PREFETCH_ROWS 4
#endif

/* Ask for the `n` bytes at p, a cache line at a time. */
static inline void prefetch_bytes(const void *p, long n) {
    for (long i = 0; i < n; i += 64)
        _mm_prefetch((const char *)p + i, _MM_HINT_T0);
}

/* The q8_0 dot product of one weight row and one quantised input row: eight lanes summed block by block, then
 * across the lanes as hsum does. */
static float q8_dot(const signed char *wq, const unsigned short *wd, const signed char *xq, const unsigned short *xd,
                    long blocks) {
    __m256 acc = _mm256_setzero_ps();
    for (long b = 0; b < blocks; b++) {
        __m256i sums = dot4_i8(_mm256_loadu_si256((const __m256i *)(wq + b * Q8_BLOCK)),
                               _mm256_loadu_si256((const __m256i *)(xq + b * Q8_BLOCK)));
        acc = q8_add(acc, sums, _cvtsh_ss(wd[b]), _cvtsh_ss(xd[b]));
    }
    return hsum(acc);
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
/* Four weight rows (w, their -128 * four-byte sums `starts` and float scales `wd`) against `n` (1 to 4) input rows
 * shifted to unsigned (xu, scales xd), each block loaded once for the 4 x n pairs; y's rows `ldy` apart. */
static inline __attribute__((always_inline)) void q8_vnni_tile(const signed char *w, long stride, long blocks,
                                                               const __m256i *starts, const float *wd,
                                                               const unsigned char *xu, const float *xd, int n,
                                                               float *y, long ldy) {
    __m256 a[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < n; j++)
            a[i][j] = _mm256_setzero_ps();
    for (long b = 0; b < blocks; b++) {
        __m256i u[4];
        float e[4];
        for (int j = 0; j < n; j++) {
            u[j] = _mm256_loadu_si256((const __m256i *)(xu + (j * blocks + b) * Q8_BLOCK));
            e[j] = xd[j * blocks + b];
        }
        for (int i = 0; i < 4; i++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + i * stride + b * Q8_BLOCK));
            __m256i start = starts[i * blocks + b];
            float dw = wd[i * blocks + b];
            for (int j = 0; j < n; j++)
                a[i][j] = q8_add(a[i][j], _mm256_dpbusd_epi32(start, u[j], wv), dw, e[j]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < n; j++)
            y[j * ldy + i] = hsum(a[i][j]);
}

/* Several input rows with VNNI: four weight rows against four (then two, then one) input rows at a time, each
 * weight and input block loaded once for all the pairs of the tile. dpbusd multiplies unsigned by signed bytes,
 * so the input is shifted to x + 128 (x ^ 0x80) and the accumulation starts from -128 * (the weight's four-byte
 * sums): the same integer lane sums as dot4_i8, then the same q8_add of each block in the same order, so the bits
 * equal q8_dot's. Returns the first weight row it did not compute (the rest go through q8_dot). */
static long q8_product_vnni(const matrix *m, const q8_rows *x, long rows, float *y, long ldy, long lo, long hi) {
    long blocks = q8_blocks(m->in), stride = blocks * Q8_BLOCK;
    if (hi - lo < 4)
        return lo;
    unsigned char *xu = malloc((size_t)(rows * blocks * Q8_BLOCK));
    float *xd = malloc(sizeof(float) * (size_t)(rows * blocks)), *wd = malloc(sizeof(float) * 4 * blocks);
    __m256i *starts = aligned_alloc(sizeof(__m256i), sizeof(__m256i) * 4 * blocks);  /* aligned: whole vectors */
    if (xu == NULL || xd == NULL || wd == NULL || starts == NULL) {
        free(xu);
        free(xd);
        free(wd);
        free(starts);
        return lo;
    }
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (long j = 0; j < rows; j++)
        for (long b = 0; b < blocks; b++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(x->q + j * x->blocks * Q8_BLOCK + b * Q8_BLOCK));
            _mm256_storeu_si256((__m256i *)(xu + (j * blocks + b) * Q8_BLOCK), _mm256_xor_si256(v, flip));
            xd[j * blocks + b] = _cvtsh_ss(x->d[j * x->blocks + b]);
        }
    long r = lo;
    for (; r + 4 <= hi; r += 4) {
        const signed char *w = m->q + r * stride;
        for (int i = 0; i < 4; i++)  /* per weight block, once for all the input rows: -128 * its sums, its scale */
            for (long b = 0; b < blocks; b++) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(w + i * stride + b * Q8_BLOCK));
                starts[i * blocks + b] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                                          _mm256_dpbusd_epi32(_mm256_setzero_si256(), flip, wv));
                wd[i * blocks + b] = _cvtsh_ss(m->d[(r + i) * blocks + b]);
            }
        long j = 0;
        for (; j + 4 <= rows; j += 4)
            q8_vnni_tile(w, stride, blocks, starts, wd, xu + j * blocks * Q8_BLOCK, xd + j * blocks, 4,
                         y + j * ldy + r, ldy);
        for (; j + 2 <= rows; j += 2)
            q8_vnni_tile(w, stride, blocks, starts, wd, xu + j * blocks * Q8_BLOCK, xd + j * blocks, 2,
                         y + j * ldy + r, ldy);
        for (; j < rows; j++)
            q8_vnni_tile(w, stride, blocks, starts, wd, xu + j * blocks * Q8_BLOCK, xd + j * blocks, 1,
                         y + j * ldy + r, ldy);
    }
    free(xu);
    free(xd);
    free(wd);
    free(starts);
    return r;
}
#endif

#if !(defined(__AVX512VNNI__) && defined(__AVX512VL__))
/* Several input rows without VNNI: four weight rows against two input rows at a time (eight accumulators fit
 * AVX2's sixteen registers), each block loaded once for the eight pairs and each weight block's magnitude taken
 * once; the sums are dot4_i8's (maddubs of |w| and sign(x, w), then madd), added as q8_dot adds them, so the
 * bits equal q8_dot's. Returns the first weight row it did not compute. */
static long q8_product_avx2(const matrix *m, const q8_rows *x, long rows, float *y, long ldy, long lo, long hi) {
    long blocks = q8_blocks(m->in), stride = blocks * Q8_BLOCK, xs = x->blocks * Q8_BLOCK;
    const __m256i ones = _mm256_set1_epi16(1);
    long r = lo;
    for (; r + 4 <= hi; r += 4) {
        const signed char *w = m->q + r * stride;
        const unsigned short *d = m->d + r * blocks;
        long j = 0;
        for (; j + 2 <= rows; j += 2) {
            const signed char *x0 = x->q + j * xs, *x1 = x0 + xs;
            const unsigned short *e0 = x->d + j * x->blocks, *e1 = e0 + x->blocks;
            __m256 a[4][2];
            for (int i = 0; i < 4; i++)
                a[i][0] = a[i][1] = _mm256_setzero_ps();
            for (long b = 0; b < blocks; b++) {
                __m256i u0 = _mm256_loadu_si256((const __m256i *)(x0 + b * Q8_BLOCK));
                __m256i u1 = _mm256_loadu_si256((const __m256i *)(x1 + b * Q8_BLOCK));
                float f0 = _cvtsh_ss(e0[b]), f1 = _cvtsh_ss(e1[b]);
                for (int i = 0; i < 4; i++) {
                    __m256i wv = _mm256_loadu_si256((const __m256i *)(w + i * stride + b * Q8_BLOCK));
                    __m256i magnitude = _mm256_sign_epi8(wv, wv);
                    float dw = _cvtsh_ss(d[i * blocks + b]);
                    __m256i s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(u0, wv)), ones);
                    __m256i s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(u1, wv)), ones);
                    a[i][0] = q8_add(a[i][0], s0, dw, f0);
                    a[i][1] = q8_add(a[i][1], s1, dw, f1);
                }
            }
            for (int i = 0; i < 4; i++) {
                y[j * ldy + r + i] = hsum(a[i][0]);
                y[(j + 1) * ldy + r + i] = hsum(a[i][1]);
            }
        }
        for (; j < rows; j++)  /* an odd last input row */
            for (int i = 0; i < 4; i++)
                y[j * ldy + r + i] = q8_dot(w + i * stride, d + i * blocks, x->q + j * xs, x->d + j * x->blocks,
                                            blocks);
    }
    return r;
}
#endif

/* y[j, r] for r in [lo, hi) and the `rows` quantised input rows: one input row, four weight rows at a time (the
 * same sums as q8_dot); several, each weight row against every input row while it is in L1 (tiles of weight
 * rows by input rows: q8_product_vnni, q8_product_avx2). */
static void q8_product(const matrix *m, const q8_rows *x, long rows, float *y, long ldy, long lo, long hi) {
    long blocks = q8_blocks(m->in), stride = blocks * Q8_BLOCK;
    long r = lo;
    if (rows > 1)
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        r = q8_product_vnni(m, x, rows, y, ldy, lo, hi);
#else
        r = q8_product_avx2(m, x, rows, y, ldy, lo, hi);
#endif
    if (rows == 1) {
        const signed char *xq = x->q;
        const unsigned short *xd = x->d;
        for (; r + 4 <= hi; r += 4) {
            const signed char *w0 = m->q + r * stride, *w1 = w0 + stride, *w2 = w1 + stride, *w3 = w2 + stride;
            const unsigned short *d0 = m->d + r * blocks, *d1 = d0 + blocks, *d2 = d1 + blocks, *d3 = d2 + blocks;
            if (r + Q8_PREFETCH_ROWS + 4 <= hi)
                prefetch_bytes(w0 + Q8_PREFETCH_ROWS * stride, 4 * stride);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (long b = 0; b < blocks; b++) {
                long c = b * Q8_BLOCK;
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + c));
                float dx = _cvtsh_ss(xd[b]);
                a0 = q8_add(a0, dot4_i8(_mm256_loadu_si256((const __m256i *)(w0 + c)), xv), _cvtsh_ss(d0[b]), dx);
                a1 = q8_add(a1, dot4_i8(_mm256_loadu_si256((const __m256i *)(w1 + c)), xv), _cvtsh_ss(d1[b]), dx);
                a2 = q8_add(a2, dot4_i8(_mm256_loadu_si256((const __m256i *)(w2 + c)), xv), _cvtsh_ss(d2[b]), dx);
                a3 = q8_add(a3, dot4_i8(_mm256_loadu_si256((const __m256i *)(w3 + c)), xv), _cvtsh_ss(d3[b]), dx);
            }
            y[r] = hsum(a0);
            y[r + 1] = hsum(a1);
            y[r + 2] = hsum(a2);
            y[r + 3] = hsum(a3);
        }
    }
    for (; r < hi; r++)
        for (long j = 0; j < rows; j++)
            y[j * ldy + r] = q8_dot(m->q + r * stride, m->d + r * blocks, x->q + j * x->blocks * Q8_BLOCK,
                                    x->d + j * x->blocks, blocks);
}

/* ---- q4_0 products ---- */

/* llama.cpp's q4_0 (generation/weights/q4.py): blocks of 32 weights, 16 bytes of nibbles q in 0 .. 15 standing for q - 8
 * (the low nibbles values 0 .. 15 of the block, the high ones 16 .. 31) and one float16 scale, multiplying input
 * rows quantised to q8_0 as llama.cpp's q4_0 x q8_0 dot product does. A block's eight lane sums are q8_dot's with
 * the weight q - 8: the four-product sums of the unsigned nibbles and the input's int8 (AVX2's maddubs and madd,
 * or VNNI's dpbusd), started from -8 times the input's four-value sums, which are computed once per input block
 * for all the weight rows (q4_starts). The same integers, then the same q8_add of each block in the same order, so
 * the bits are q4_dot's in every kernel and on every build. */
#define Q4_BYTES 16 /* bytes of a block's nibbles */

/* A block's 32 nibbles as bytes in the order of its values: its 16 bytes in both halves (a load), the upper half
 * shifted right by 4, then the low four bits of each byte. */
static inline __m256i q4_unpack(const unsigned char *p) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* start + the eight sums of four adjacent products of unsigned bytes u (0 .. 15) and signed bytes x (no 16-bit sum
 * saturates: 2 * 15 * 128 < 32768). */
static inline __m256i dot4_u4(__m256i start, __m256i u, __m256i x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(start, u, x);
#else
    return _mm256_add_epi32(start, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
#endif
}

/* -8 times the eight four-value sums of a block of 32 int8. */
static inline __m256i q4_start(const signed char *x) {
    __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), xv), _mm256_set1_epi16(1));
    return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sums, 3));
}

/* The q4_0 x q8_0 dot product of one weight row and one quantised input row. */
static float q4_dot(const unsigned char *wq, const unsigned short *wd, const signed char *xq, const unsigned short *xd,
                    long blocks) {
    __m256 acc = _mm256_setzero_ps();
    for (long b = 0; b < blocks; b++) {
        const signed char *xb = xq + b * Q8_BLOCK;
        __m256i sums = dot4_u4(q4_start(xb), q4_unpack(wq + b * Q4_BYTES), _mm256_loadu_si256((const __m256i *)xb));
        acc = q8_add(acc, sums, _cvtsh_ss(wd[b]), _cvtsh_ss(xd[b]));
    }
    return hsum(acc);
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define Q4_TILE_ROWS 4 /* input rows of a tile: 4 x 4 accumulators fit AVX-512's 32 vector registers */
#else
#define Q4_TILE_ROWS 2 /* 4 x 2 fit AVX2's 16 */
#endif

/* scale[(i * n + j) * blocks + b] = d_w * d_x of block b of weight row i (float16 scales wd, `blocks` apart) and
 * input row j (float scales xd, `blocks` apart) for the four weight rows of a tile and its n input rows: the product
 * of every block's scales taken eight blocks at a time before the tile's loop, which then only loads them. */
static inline __attribute__((always_inline)) void q4_scales(const unsigned short *wd, const float *xd, long blocks,
                                                            int n, float *scale) {
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < n; j++) {
            float *out = scale + (i * n + j) * blocks;
            const unsigned short *w = wd + i * blocks;
            const float *x = xd + j * blocks;
            long b = 0;
            for (; b + 8 <= blocks; b += 8)
                _mm256_storeu_ps(out + b, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + b))),
                                                        _mm256_loadu_ps(x + b)));
            for (; b < blocks; b++)
                out[b] = _cvtsh_ss(w[b]) * x[b];
        }
}

/* Four weight rows (nibbles w, `stride` bytes apart, scales wd `blocks` apart) against `n` input rows (their
 * integers xq `xs` bytes apart, starts and float scales `blocks` apart), each weight block unpacked once for the
 * 4 x n pairs; y's rows `ldy` apart. `scale` holds 4 * n * blocks floats (q4_scales). */
static inline __attribute__((always_inline)) void q4_tile(const unsigned char *w, long stride,
                                                          const unsigned short *wd, long blocks,
                                                          const signed char *xq, long xs, const __m256i *starts,
                                                          const float *xd, int n, float *scale, float *y, long ldy) {
    __m256 a[4][Q4_TILE_ROWS];
    q4_scales(wd, xd, blocks, n, scale);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < n; j++)
            a[i][j] = _mm256_setzero_ps();
    for (long b = 0; b < blocks; b++) {
        __m256i u[4];
        for (int i = 0; i < 4; i++)
            u[i] = q4_unpack(w + i * stride + b * Q4_BYTES);
        for (int j = 0; j < n; j++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j * xs + b * Q8_BLOCK));
            __m256i start = _mm256_load_si256(starts + j * blocks + b);
            for (int i = 0; i < 4; i++) {
                __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(dot4_u4(start, u[i], xv)),
                                               _mm256_broadcast_ss(scale + (i * n + j) * blocks + b));
                a[i][j] = _mm256_add_ps(a[i][j], product); /* q8_add's multiply, then add */
            }
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < n; j++)
            y[j * ldy + i] = hsum(a[i][j]);
}

/* y[j, r] for r in [lo, hi) of a q4_0 weight and the `rows` quantised input rows: tiles of four weight rows by
 * Q4_TILE_ROWS input rows (one input row while decoding one token), each weight row read from memory once for all
 * the input rows while it is in L1; the weight rows left over through q4_dot (also when out of memory). */
static void q4_product(const matrix *m, const q8_rows *x, long rows, float *y, long ldy, long lo, long hi) {
    long blocks = q8_blocks(m->in), stride = blocks * Q4_BYTES, xs = x->blocks * Q8_BLOCK;
    const unsigned char *q = (const unsigned char *)m->q;
    __m256i *starts = aligned_alloc(sizeof(__m256i), sizeof(__m256i) * (size_t)(rows * blocks));
    float *xd = malloc(sizeof(float) * (size_t)(rows * blocks));
    float *scale = malloc(sizeof(float) * (size_t)(4 * Q4_TILE_ROWS * blocks));
    long r = lo;
    if (starts != NULL && xd != NULL && scale != NULL) {
        for (long j = 0; j < rows; j++)
            for (long b = 0; b < blocks; b++) {
                starts[j * blocks + b] = q4_start(x->q + j * xs + b * Q8_BLOCK);
                xd[j * blocks + b] = _cvtsh_ss(x->d[j * x->blocks + b]);
            }
        for (; r + 4 <= hi; r += 4) {
            const unsigned char *w = q + r * stride;
            const unsigned short *d = m->d + r * blocks;
            long j = 0;
            if (r + Q4_PREFETCH_ROWS + 4 <= hi)
                prefetch_bytes(w + Q4_PREFETCH_ROWS * stride, 4 * stride);
            for (; j + Q4_TILE_ROWS <= rows; j += Q4_TILE_ROWS)
                q4_tile(w, stride, d, blocks, x->q + j * xs, xs, starts + j * blocks, xd + j * blocks, Q4_TILE_ROWS,
                        scale, y + j * ldy + r, ldy);
#if Q4_TILE_ROWS > 2
            for (; j + 2 <= rows; j += 2)
                q4_tile(w, stride, d, blocks, x->q + j * xs, xs, starts + j * blocks, xd + j * blocks, 2,
                        scale, y + j * ldy + r, ldy);
#endif
            for (; j < rows; j++)
                q4_tile(w, stride, d, blocks, x->q + j * xs, xs, starts + j * blocks, xd + j * blocks, 1,
                        scale, y + j * ldy + r, ldy);
        }
    }
    free(starts);
    free(xd);
    free(scale);
    for (; r < hi; r++)
        for (long j = 0; j < rows; j++)
            y[j * ldy + r] = q4_dot(q + r * stride, m->d + r * blocks, x->q + j * xs, x->d + j * x->blocks, blocks);
}

#define ROWS_CASE(n)                                                                                              \
    case n:                                                                                                       \
        if (m->transposed)                                                                                        \
            cols_axpy_n(m->w, m->out, m->in, x, n, y, ldy, lo, hi);                                               \
        else                                                                                                      \
            rows_dot_n(m->w, m->in, x, n, y, ldy, lo, hi);                                                        \
        break;

/* y[b, lo:hi] of m x[b] for `rows` input rows of m->in (y's rows `ldy` apart). Up to MAX_ROWS rows (decoding),
 * each weight row is streamed once for all of them (rows_dot_1, rows_dot_n: the fastest when the weight comes from
 * memory); more rows (prompts), row-major weights go through the register-blocked rows_dot, transposed ones
 * MAX_ROWS rows per pass. The sums run in the same order in every kernel. A q8_0 or q4_0 weight (m->q)
 * multiplies the input rows quantised to q8_0 (xq) in q8_product or q4_product. */
static void product(const matrix *m, const float *x, const q8_rows *xq, long rows, float *y, long ldy, long lo,
                    long hi) {
    if (m->q != NULL) {
        if (m->q4)
            q4_product(m, xq, rows, y, ldy, lo, hi);
        else
            q8_product(m, xq, rows, y, ldy, lo, hi);
        return;
    }
    if (!m->transposed && rows > MAX_ROWS) {
        rows_dot(m->w, m->in, x, rows, y, ldy, lo, hi);
        return;
    }
    for (long b0 = 0; b0 < rows; b0 += MAX_ROWS) {
        int n = rows - b0 < MAX_ROWS ? (int)(rows - b0) : MAX_ROWS;
        const float *xb = x + b0 * m->in;
        float *yb = y + b0 * ldy;
        if (n == 1 && !m->transposed) {
            rows_dot_1(m->w, m->in, xb, yb, lo, hi);
            continue;
        }
        {
            const float *x = xb; /* the names ROWS_CASE uses */
            float *y = yb;
            switch (n) {
                ROWS_CASE(1)
                ROWS_CASE(2)
                ROWS_CASE(3)
                ROWS_CASE(4)
                ROWS_CASE(5)
                ROWS_CASE(6)
                ROWS_CASE(7)
                ROWS_CASE(8)
            }
        }
    }
}


void run_products(void *p, int index, int count) {
    products_task *t = (products_task *)p;
    long total = 0;
    for (int i = 0; i < t->n; i++)
        total += t->m[i]->out;
    long lo, hi, base = 0;
    share(total, 16, index, count, &lo, &hi);
    for (int i = 0; i < t->n && base < hi; i++) {
        long out = t->m[i]->out, a = lo > base ? lo - base : 0, b = hi - base < out ? hi - base : out;
        if (a < b)
            product(t->m[i], t->x, t->xq, t->rows, t->y[i], out, a, b);
        base += out;
    }
}

/* y = x m^T on the team for `rows` rows of x (tested against F.linear). */
void team_product(team_t *team, const matrix *m, const float *x, long rows, float *y) {
    q8_rows xq = {NULL, NULL, q8_blocks(m->in)};
    if (m->q != NULL) {
        xq.q = malloc(rows * xq.blocks * Q8_BLOCK + 1);
        xq.d = malloc(sizeof(unsigned short) * (rows * xq.blocks + 1));
        quantize_rows_q8(x, rows, m->in, &xq);
    }
    products_task t = {1, {m}, x, rows, {y}, &xq};
    team_run(team, run_products, &t);
    free(xq.q);
    free(xq.d);
}


void run_gated(void *p, int index, int count) {
    gated_task *t = (gated_task *)p;
    long lo, hi, ff = t->gate->out;
    share(ff, 16, index, count, &lo, &hi);
    if (lo >= hi)
        return;
    product(t->gate, t->x, t->xq, t->rows, t->g, ff, lo, hi);
    product(t->up, t->x, t->xq, t->rows, t->u, ff, lo, hi);
    for (long b = 0; b < t->rows; b++)
        swiglu(t->g + b * ff + lo, t->u + b * ff + lo, t->h + b * ff + lo, hi - lo);
}
