/* Forward passes of a LLaMA-shaped model in one native call each (forward_rows): decoding steps (one new token
 * for each of any number of rows), prompts, and the continuous batcher's passes (those tokens plus chunks of
 * prompts), their products run by kernels.c on a team of threads.
 *
 * Loaded with ctypes by generation/native/, which also says when it is used (float32 on CPU, pre-norm RMSNorm,
 * SwiGLU, rotary positions, no biases) and describes the model's weights where they already are in the structs
 * below (mirrored by generation/native/abi.py): nothing is copied. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* ---- the model ---- */

typedef struct {
    const float *attention_norm, *feed_forward_norm; /* RMSNorm weights (hidden) */
    matrix q, k, v, o, gate, up, down;
} layer_t;

typedef struct {
    long layers, hidden, heads, kv_heads, head_dim, feedforward, vocab;
    float eps;
    const float *embedding;  /* (vocab, hidden) row-major */
    const float *final_norm; /* (hidden) */
    matrix head;             /* the LM head */
    const layer_t *layer;
} model_t;

/* Where one row (one token) keeps its keys and values, and what it attends to: its cache holds the keys of layer
 * l, key/value head h, column t at keys + l * layer + h * head + t * column (values alike). Its own key and value
 * go to column `write`, and it attends to columns first .. write (the columns before `first` are left padding, or
 * another request's). A decoding step's rows are the rows of one cache, each writing the same column; the tokens of
 * a prompt chunk share the row of their request's cache, each writing its own column and seeing the columns before
 * it (causally). */
typedef struct {
    float *keys, *values;
    long layer, head, column;
    long write, first;
} row_t;

static void rms_norm(const float *x, const float *weight, long n, float eps, float *out) {
    float sum = 0.0f;
    for (long i = 0; i < n; i++)
        sum += x[i] * x[i];
    float scale = 1.0f / sqrtf(sum / n + eps);
    for (long i = 0; i < n; i++)
        out[i] = x[i] * scale * weight[i];
}

/* Rotate interleaved pairs (x[2i], x[2i+1]) of each of `heads` heads by cos[i] + i sin[i]. */
static void rotate(float *x, long heads, long head_dim, const float *cos, const float *sin) {
    for (long h = 0; h < heads; h++) {
        float *v = x + h * head_dim;
        for (long i = 0; i < head_dim / 2; i++) {
            float a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * cos[i] - b * sin[i];
            v[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    }
}

typedef struct {
    const model_t *m;
    const row_t *row;
    long layer, rows, span;
    const float *q; /* (rows, heads * head_dim) */
    float *out;     /* (rows, heads * head_dim) */
    float *scores;  /* (threads, span) */
} attention_task;

/* Softmax attention of each row's query heads over their key/value head's columns first .. write, split by
 * (row, head): the scores of four keys at once, the weighted values summed in registers. */
static void run_attention(void *p, int index, int count) {
    attention_task *t = (attention_task *)p;
    const model_t *m = t->m;
    long lo, hi, d = m->head_dim, d8 = d & ~7L, group = m->heads / m->kv_heads;
    share(t->rows * m->heads, 1, index, count, &lo, &hi);
    float scale = 1.0f / sqrtf((float)d), *s = t->scores + index * t->span;
    for (long job = lo; job < hi; job++) {
        long b = job / m->heads, h = job % m->heads;
        const row_t *r = &t->row[b];
        long span = r->write + 1 - r->first, col = r->column;
        long at = t->layer * r->layer + (h / group) * r->head + r->first * col;
        const float *q = t->q + b * m->hidden + h * d, *keys = r->keys + at, *values = r->values + at;
        float top = -INFINITY, total = 0.0f;
        long j = 0;
        for (; j + 4 <= span; j += 4) {
            const float *k0 = keys + j * col, *k1 = k0 + col, *k2 = k1 + col, *k3 = k2 + col;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (long i = 0; i < d8; i += 8) {
                __m256 qv = _mm256_loadu_ps(q + i);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
            }
            float d0 = hsum(a0), d1 = hsum(a1), d2 = hsum(a2), d3 = hsum(a3);
            for (long i = d8; i < d; i++) {
                d0 += q[i] * k0[i];
                d1 += q[i] * k1[i];
                d2 += q[i] * k2[i];
                d3 += q[i] * k3[i];
            }
            s[j] = d0 * scale;
            s[j + 1] = d1 * scale;
            s[j + 2] = d2 * scale;
            s[j + 3] = d3 * scale;
        }
        for (; j < span; j++) {
            const float *k0 = keys + j * col;
            __m256 a0 = _mm256_setzero_ps();
            for (long i = 0; i < d8; i += 8)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k0 + i), a0);
            float d0 = hsum(a0);
            for (long i = d8; i < d; i++)
                d0 += q[i] * k0[i];
            s[j] = d0 * scale;
        }
        for (j = 0; j < span; j++)
            top = s[j] > top ? s[j] : top;
        total = exp_shifted(s, span, top);
        float norm = 1.0f / total, *o = t->out + b * m->hidden + h * d;
        for (long i0 = 0; i0 < d8; i0 += 64) { /* eight vectors of the output at a time, in registers */
            int n = d8 - i0 < 64 ? (int)((d8 - i0) / 8) : 8;
            __m256 acc[8];
            for (int v = 0; v < n; v++)
                acc[v] = _mm256_setzero_ps();
            for (j = 0; j < span; j++) {
                __m256 w = _mm256_set1_ps(s[j]);
                const float *vj = values + j * col + i0;
                for (int v = 0; v < n; v++)
                    acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + 8 * v), acc[v]);
            }
            __m256 nv = _mm256_set1_ps(norm);
            for (int v = 0; v < n; v++)
                _mm256_storeu_ps(o + i0 + 8 * v, _mm256_mul_ps(acc[v], nv));
        }
        for (long i = d8; i < d; i++) {
            float sum = 0.0f;
            for (j = 0; j < span; j++)
                sum += s[j] * values[j * col + i];
            o[i] = sum * norm;
        }
    }
}

/* The index of the largest of n floats: the first of equal ones, and the first NaN if there is one (NaN counts
 * as the largest, as in torch.argmax and numpy.argmax). */
static long argmax(const float *x, long n) {
    long at = 0;
    for (long i = 1; i < n; i++) {
        if (isnan(x[at]))
            break;
        if (x[i] > x[at] || isnan(x[i]))
            at = i;
    }
    return at;
}

/* Whether any product of the model has q8_0 weights. */
static int uses_q8(const model_t *m) {
    if (m->head.q != NULL)
        return 1;
    for (long l = 0; l < m->layers; l++)
        if (m->layer[l].q.q || m->layer[l].k.q || m->layer[l].v.q || m->layer[l].o.q || m->layer[l].gate.q ||
            m->layer[l].up.q || m->layer[l].down.q)
            return 1;
    return 0;
}

/* The `rows` rows of n floats at x quantised into q / d for a q8_0 weight m (NULL, nothing done, for a float one). */
static const q8_rows *quantized_input(const matrix *m, const float *x, long rows, long n, signed char *q,
                                      unsigned short *d, q8_rows *out) {
    if (m->q == NULL)
        return NULL;
    out->q = q;
    out->d = d;
    out->blocks = q8_blocks(n);
    quantize_rows_q8(x, rows, n, out);
    return out;
}

/* Scratch floats forward_rows needs for `rows` rows attending to at most `span` columns each, on `threads`. */
long scratch_size(const model_t *m, long rows, long span, int threads) {
    return rows * (5 * m->hidden + 2 * m->kv_heads * m->head_dim + 3 * m->feedforward) + threads * span;
}

/* One pass of the model over `rows` tokens (tokens[b] at rotary position positions[b], its cache row[b]): every
 * product reads its weight once for all rows, and each row's key and value are stored before any row attends.
 * Writes the logits (picks, vocab) of rows pick[0 .. picks - 1] only, and unless `best` is NULL the index of each
 * one's largest logit into it (the greedy token, as torch.argmax picks it). `cos`/`sin`: the rotary tables,
 * head_dim / 2 floats per position. A decoding step is a pass of one token per row of a cache; the batcher's passes
 * add the chunks of prompts being read. */
void forward_rows(team_t *team, const model_t *m, long rows, const long *tokens, const long *positions,
                  const float *cos, const float *sin, const row_t *row, long span, float *scratch, long picks,
                  const long *pick, float *logits, long *best) {
    long hidden = m->hidden, kv_size = m->kv_heads * m->head_dim, ff = m->feedforward, half = m->head_dim / 2;
    float *x = scratch, *normed = x + rows * hidden, *q = normed + rows * hidden;
    float *attended = q + rows * hidden, *projected = attended + rows * hidden;
    float *k = projected + rows * hidden, *v = k + rows * kv_size;
    float *g = v + rows * kv_size, *u = g + rows * ff, *h = u + rows * ff, *scores = h + rows * ff;
    for (long b = 0; b < rows; b++)
        memcpy(x + b * hidden, m->embedding + tokens[b] * hidden, sizeof(float) * hidden);
    long widest = q8_blocks(hidden > ff ? hidden : ff);
    q8_rows xq = {NULL, NULL, 0}; /* the input rows of each q8_0 product, quantised (set by quantized_input) */
    signed char *xq_q = NULL;
    unsigned short *xq_d = NULL;
    if (uses_q8(m)) {
        xq_q = malloc(rows * widest * Q8_BLOCK);
        xq_d = malloc(sizeof(unsigned short) * rows * widest);
    }
    for (long l = 0; l < m->layers; l++) {
        const layer_t *layer = &m->layer[l];
        for (long b = 0; b < rows; b++)
            rms_norm(x + b * hidden, layer->attention_norm, hidden, m->eps, normed + b * hidden);
        const matrix *any_qkv = layer->q.q ? &layer->q : layer->k.q ? &layer->k : &layer->v; /* q8_0 or not */
        const q8_rows *in = quantized_input(any_qkv, normed, rows, hidden, xq_q, xq_d, &xq);
        products_task qkv = {3, {&layer->q, &layer->k, &layer->v}, normed, rows, {q, k, v}, in};
        team_run(team, run_products, &qkv);
        for (long b = 0; b < rows; b++) {
            const float *c = cos + positions[b] * half, *sn = sin + positions[b] * half;
            const row_t *r = &row[b];
            rotate(q + b * hidden, m->heads, m->head_dim, c, sn);
            rotate(k + b * kv_size, m->kv_heads, m->head_dim, c, sn);
            for (long kvh = 0; kvh < m->kv_heads; kvh++) {
                long at = l * r->layer + kvh * r->head + r->write * r->column;
                memcpy(r->keys + at, k + b * kv_size + kvh * m->head_dim, sizeof(float) * m->head_dim);
                memcpy(r->values + at, v + b * kv_size + kvh * m->head_dim, sizeof(float) * m->head_dim);
            }
        }
        attention_task attention = {m, row, l, rows, span, q, attended, scores};
        team_run(team, run_attention, &attention);
        products_task o = {1, {&layer->o}, attended, rows, {projected},
                           quantized_input(&layer->o, attended, rows, hidden, xq_q, xq_d, &xq)};
        team_run(team, run_products, &o);
        for (long i = 0; i < rows * hidden; i++)
            x[i] += projected[i];
        for (long b = 0; b < rows; b++)
            rms_norm(x + b * hidden, layer->feed_forward_norm, hidden, m->eps, normed + b * hidden);
        gated_task gated = {&layer->gate, &layer->up, normed, rows, g, u, h,
                            quantized_input(layer->gate.q ? &layer->gate : &layer->up, normed, rows, hidden, xq_q,
                                            xq_d, &xq)};
        team_run(team, run_gated, &gated);
        products_task down = {1, {&layer->down}, h, rows, {projected},
                              quantized_input(&layer->down, h, rows, ff, xq_q, xq_d, &xq)};
        team_run(team, run_products, &down);
        for (long i = 0; i < rows * hidden; i++)
            x[i] += projected[i];
    }
    for (long i = 0; i < picks; i++)
        rms_norm(x + pick[i] * hidden, m->final_norm, hidden, m->eps, normed + i * hidden);
    products_task head = {1, {&m->head}, normed, picks, {logits},
                          quantized_input(&m->head, normed, picks, hidden, xq_q, xq_d, &xq)};
    team_run(team, run_products, &head);
    free(xq_q);
    free(xq_d);
    for (long i = 0; best && i < picks; i++)
        best[i] = argmax(logits + i * m->vocab, m->vocab);
}
