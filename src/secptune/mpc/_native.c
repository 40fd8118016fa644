/* Native kernels of the MPC engine, each with a torch/numpy twin that runs where this module
 * was not built (SECPTUNE_NATIVE=0 switches them off):
 *
 * 1. Distributed comparison functions: the key generation and evaluation of
 *    secptune.mpc.fss, one comparison at a time through every tree level, with fixed-key AES
 *    on the CPU's AES instructions (AES-NI; x86-64 only).  Bit-identical to fss.py's numpy
 *    path (the tests compare both).
 * 2. Harmonic series of Pi_cosine (secptune.mpc.protocols.trig): the dealer's rounded
 *    w_k cos(k theta_t), w_k sin(k theta_t) for every harmonic, and the servers' sums
 *    sum_k sin(k theta_d) C_k - cos(k theta_d) S_k (and the cosine sum) over the dealt shares,
 *    element by element with cos and sin of the harmonics by rotation recurrences in float64
 *    (exact to about K 1e-16 before rounding to the fixed-point scale; any CPU).
 *
 * Layouts (all little-endian uint64 words, as numpy's arrays in fss.DCFKeys):
 *   alpha (N), beta (N, P), root (N, 2), x (N), out (N, P);
 *   cw_seed (n, N, 2), cw_value (n, N, P), cw_t (n, N, 2) uint8, cw_final (N, P).
 * Each call handles the comparisons [start, stop) of a batch of N and releases the GIL, so
 * that threads can share a batch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define SECPTUNE_X86 1
#include <immintrin.h>
#endif

#ifdef SECPTUNE_X86

#define TARGET __attribute__((target("aes,sse4.1")))

typedef struct { __m128i rk[11]; } schedule;

TARGET static __m128i expand_step(__m128i key, __m128i gen) {
    gen = _mm_shuffle_epi32(gen, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, gen);
}

#define EXPAND(i, rcon) s->rk[i] = expand_step(s->rk[i - 1], _mm_aeskeygenassist_si128(s->rk[i - 1], rcon))

TARGET static void key_schedule(schedule *s, const uint8_t *key) {
    s->rk[0] = _mm_loadu_si128((const __m128i *)key);
    EXPAND(1, 0x01); EXPAND(2, 0x02); EXPAND(3, 0x04); EXPAND(4, 0x08); EXPAND(5, 0x10);
    EXPAND(6, 0x20); EXPAND(7, 0x40); EXPAND(8, 0x80); EXPAND(9, 0x1b); EXPAND(10, 0x36);
}

/* Matyas-Meyer-Oseas, in place on k blocks at once (independent blocks pipeline):
 * b <- AES_K(b) ^ b. */
TARGET static inline void mmo(const schedule *s, __m128i *b, int k) {
    __m128i x[8];
    for (int j = 0; j < k; j++) x[j] = _mm_xor_si128(b[j], s->rk[0]);
    for (int r = 1; r < 10; r++)
        for (int j = 0; j < k; j++) x[j] = _mm_aesenc_si128(x[j], s->rk[r]);
    for (int j = 0; j < k; j++) b[j] = _mm_xor_si128(_mm_aesenclast_si128(x[j], s->rk[10]), b[j]);
}

static inline __m128i load_block(const uint64_t *w) { return _mm_loadu_si128((const __m128i *)w); }
static inline uint64_t word0(__m128i b) { return (uint64_t)_mm_cvtsi128_si64(b); }
TARGET static inline uint64_t word1(__m128i b) { return (uint64_t)_mm_extract_epi64(b, 1); }
static inline __m128i tweak(__m128i b, uint64_t j) { return _mm_xor_si128(b, _mm_set_epi64x(0, (long long)j)); }
static inline __m128i clear_lsb(__m128i b) { return _mm_andnot_si128(_mm_set_epi64x(0, 1), b); }
static inline __m128i select_block(uint64_t mask, __m128i b) {
    return _mm_and_si128(b, _mm_set1_epi64x((long long)mask));     /* mask: 0 or all ones */
}

TARGET static void keygen_range(const schedule *s, const uint64_t *alpha, const uint64_t *beta, int P, int n,
                                const uint64_t *root0, const uint64_t *root1, uint64_t *cw_seed,
                                uint64_t *cw_value, uint8_t *cw_t, uint64_t *cw_final, Py_ssize_t N,
                                Py_ssize_t start, Py_ssize_t stop) {
    for (Py_ssize_t i = start; i < stop; i++) {
        __m128i seed[2] = {clear_lsb(load_block(root0 + 2 * i)), clear_lsb(load_block(root1 + 2 * i))};
        uint64_t t[2] = {0, 1};
        uint64_t v_alpha[2] = {0, 0};
        const uint64_t a = alpha[i];
        for (int level = 0; level < n; level++) {
            const uint64_t bit = (a >> (n - 1 - level)) & 1;
            const uint64_t right = (uint64_t)0 - bit;
            __m128i h[8];
            const int per = 2 + P;
            for (int p = 0; p < 2; p++)
                for (int j = 0; j < per; j++) h[p * per + j] = tweak(seed[p], (uint64_t)j);
            mmo(s, h, 2 * per);
            __m128i s_l[2], s_r[2], s_keep[2];
            uint64_t t_l[2], t_r[2], v_l[2][2], v_r[2][2];
            for (int p = 0; p < 2; p++) {
                const __m128i *hp = h + p * per;
                t_l[p] = word0(hp[0]) & 1;
                t_r[p] = word0(hp[1]) & 1;
                s_l[p] = clear_lsb(hp[0]);
                s_r[p] = clear_lsb(hp[1]);
                if (P == 1) {
                    v_l[p][0] = word0(hp[2]);
                    v_r[p][0] = word1(hp[2]);
                } else {
                    v_l[p][0] = word0(hp[2]); v_l[p][1] = word1(hp[2]);
                    v_r[p][0] = word0(hp[3]); v_r[p][1] = word1(hp[3]);
                }
                s_keep[p] = _mm_xor_si128(s_l[p], select_block(right, _mm_xor_si128(s_l[p], s_r[p])));
            }
            /* the correction seed: the lost children's seeds, xored */
            const __m128i s_cw = _mm_xor_si128(_mm_xor_si128(s_l[0], s_r[0]), _mm_xor_si128(s_l[1], s_r[1]));
            const __m128i s_cw_out = _mm_xor_si128(s_cw, _mm_xor_si128(s_keep[0], s_keep[1]));
            const uint64_t sign1 = (uint64_t)1 - 2 * t[1];
            uint64_t *value = cw_value + ((Py_ssize_t)level * N + i) * P;
            for (int k = 0; k < P; k++) {
                const uint64_t keep0 = bit ? v_r[0][k] : v_l[0][k], keep1 = bit ? v_r[1][k] : v_l[1][k];
                const uint64_t lose0 = bit ? v_l[0][k] : v_r[0][k], lose1 = bit ? v_l[1][k] : v_r[1][k];
                const uint64_t v_cw = sign1 * (lose1 - lose0 - v_alpha[k] + beta[i * P + k] * bit);
                value[k] = v_cw;
                v_alpha[k] += keep0 - keep1 + sign1 * v_cw;
            }
            const uint64_t t_cw_l = t_l[0] ^ t_l[1] ^ bit ^ 1, t_cw_r = t_r[0] ^ t_r[1] ^ bit;
            _mm_storeu_si128((__m128i *)(cw_seed + ((Py_ssize_t)level * N + i) * 2), s_cw_out);
            cw_t[((Py_ssize_t)level * N + i) * 2] = (uint8_t)t_cw_l;
            cw_t[((Py_ssize_t)level * N + i) * 2 + 1] = (uint8_t)t_cw_r;
            const uint64_t t_cw_keep = bit ? t_cw_r : t_cw_l;
            for (int p = 0; p < 2; p++) {
                const uint64_t t_keep = bit ? t_r[p] : t_l[p];
                seed[p] = _mm_xor_si128(s_keep[p], select_block((uint64_t)0 - t[p], s_cw_out));
                t[p] = t_keep ^ (t[p] & t_cw_keep);
            }
        }
        const uint64_t sign1 = (uint64_t)1 - 2 * t[1];
        const uint64_t conv0[2] = {word0(seed[0]), word1(seed[0])}, conv1[2] = {word0(seed[1]), word1(seed[1])};
        for (int k = 0; k < P; k++) cw_final[i * P + k] = sign1 * (conv1[k] - conv0[k] - v_alpha[k]);
    }
}

/* Evaluation walks GROUP comparisons' trees in lockstep: each tree's levels depend on one
 * another, so independent trees side by side keep the AES units busy. */
#define GROUP 4

TARGET static void eval_range(const schedule *s, int party, int n, int P, const uint64_t *root,
                              const uint64_t *cw_seed, const uint64_t *cw_value, const uint8_t *cw_t,
                              const uint64_t *cw_final, const uint64_t *x, uint64_t *out, Py_ssize_t N,
                              Py_ssize_t start, Py_ssize_t stop) {
    for (Py_ssize_t i0 = start; i0 < stop; i0 += GROUP) {
        const int g = (int)(stop - i0 < GROUP ? stop - i0 : GROUP);
        __m128i seed[GROUP];
        uint64_t t[GROUP], total[GROUP][2], xi[GROUP];
        for (int j = 0; j < g; j++) {
            seed[j] = clear_lsb(load_block(root + 2 * (i0 + j)));
            t[j] = (uint64_t)party;
            total[j][0] = total[j][1] = 0;
            xi[j] = x[i0 + j];
        }
        for (int level = 0; level < n; level++) {
            __m128i h[2 * GROUP];
            uint64_t right[GROUP];
            for (int j = 0; j < g; j++) {
                right[j] = (xi[j] >> (n - 1 - level)) & 1;
                h[2 * j] = tweak(seed[j], right[j]);
                h[2 * j + 1] = tweak(seed[j], P == 1 ? 2 : right[j] + 2);
            }
            mmo(s, h, 2 * g);
            for (int j = 0; j < g; j++) {
                const Py_ssize_t at = (Py_ssize_t)level * N + i0 + j;
                const uint64_t mask = (uint64_t)0 - t[j];
                const uint64_t *value = cw_value + at * P;
                if (P == 1) {
                    total[j][0] += (right[j] ? word1(h[2 * j + 1]) : word0(h[2 * j + 1])) + (value[0] & mask);
                } else {
                    total[j][0] += word0(h[2 * j + 1]) + (value[0] & mask);
                    total[j][1] += word1(h[2 * j + 1]) + (value[1] & mask);
                }
                const uint64_t t_next = word0(h[2 * j]) & 1;
                seed[j] = _mm_xor_si128(clear_lsb(h[2 * j]), select_block(mask, load_block(cw_seed + 2 * at)));
                t[j] = t_next ^ (t[j] & cw_t[2 * at + right[j]]);
            }
        }
        for (int j = 0; j < g; j++) {
            const Py_ssize_t i = i0 + j;
            const uint64_t mask = (uint64_t)0 - t[j];
            const uint64_t conv[2] = {word0(seed[j]), word1(seed[j])};
            for (int k = 0; k < P; k++) {
                const uint64_t v = total[j][k] + conv[k] + (cw_final[i * P + k] & mask);
                out[i * P + k] = party == 0 ? v : (uint64_t)0 - v;
            }
        }
    }
}

static int cpu_has_aes(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
}

#endif /* SECPTUNE_X86 */


/* ---- harmonic series ---------------------------------------------------------------------- */

#include <math.h>

#define TWO_PI_OVER_RING (6.283185307179586 / 18446744073709551616.0)
#define BLOCK 256

/* v rounded to the nearest integer, ties to even (as torch.round), for |v| < 2^51: adding
 * and subtracting 1.5 * 2^52 leaves no fraction bits (no libm call, so it vectorises). */
static inline int64_t round_even(double v) {
    const double magic = 6755399441055744.0;
    return (int64_t)((v + magic) - magic);
}

/* cos and sin of k_i theta for the harmonics k (K of them) of BLOCK angles: c[i][e], s[i][e].
 * When the harmonics step evenly (k_i = k_0 + i d, as every series here), each is the last
 * rotated by d theta; otherwise each is computed afresh. */
static void harmonics_of(const double *theta, int m, const long long *k, int K, int even, double *c, double *s) {
    if (even && K > 1) {
        /* harmonic by harmonic across the block's angles: each step is independent across
         * angles (vectorised), with the same operations per angle as a rotation angle by angle */
        const double d = (double)(k[1] - k[0]);
        double cd[BLOCK], sd[BLOCK];
        for (int e = 0; e < m; e++) {
            c[e] = cos(k[0] * theta[e]);
            s[e] = sin(k[0] * theta[e]);
            cd[e] = cos(d * theta[e]);
            sd[e] = sin(d * theta[e]);
        }
        for (int i = 1; i < K; i++) {
            const double *restrict c0 = c + (i - 1) * BLOCK, *restrict s0 = s + (i - 1) * BLOCK;
            double *restrict c1 = c + i * BLOCK, *restrict s1 = s + i * BLOCK;
            for (int e = 0; e < m; e++) {
                c1[e] = c0[e] * cd[e] - s0[e] * sd[e];
                s1[e] = s0[e] * cd[e] + c0[e] * sd[e];
            }
        }
    } else {
        for (int i = 0; i < K; i++)
            for (int e = 0; e < m; e++) {
                c[i * BLOCK + e] = cos(k[i] * theta[e]);
                s[i * BLOCK + e] = sin(k[i] * theta[e]);
            }
    }
}

/* What both series kernels hold: the harmonics k (K of them, `even` when they step evenly),
 * the buffers of the K cos and K sin arrays of n int64 each (the dealer's outputs, or the
 * servers' dealt shares), and the per-block tables of cos and sin of the harmonics. */
typedef struct {
    long long *k;
    int K, even;
    Py_buffer *cos, *sin;
    int cos_held, sin_held;
    double *c, *s;
} series;

/* Releases what series_open obtained (safe on a zeroed or partly opened series). */
static void series_close(series *q) {
    for (int i = 0; q->cos_held && i < q->K; i++) PyBuffer_Release(&q->cos[i]);
    for (int i = 0; q->sin_held && i < q->K; i++) PyBuffer_Release(&q->sin[i]);
    PyMem_Free(q->k); PyMem_Free(q->cos); PyMem_Free(q->sin); PyMem_Free(q->c); PyMem_Free(q->s);
    memset(q, 0, sizeof(*q));
}

/* The buffers of a list of K arrays of n int64 each, writable or not; on failure none is held. */
static int get_buffers(PyObject *list, int K, Py_ssize_t n, int writable, Py_buffer *views) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != K) {
        PyErr_SetString(PyExc_ValueError, "one array per harmonic");
        return 0;
    }
    for (int i = 0; i < K; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, i), &views[i],
                               writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0
            || views[i].len != n * 8) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "an array of the wrong size");
            for (int j = 0; j <= i; j++) if (views[j].obj) PyBuffer_Release(&views[j]);
            return 0;
        }
    }
    return 1;
}

/* Fills q from the harmonics and the two lists of arrays; on failure sets the exception,
 * leaves q closed and returns 0. */
static int series_open(series *q, PyObject *harmonics, PyObject *cos_list, PyObject *sin_list, Py_ssize_t n,
                       int writable) {
    memset(q, 0, sizeof(*q));
    PyObject *fast = PySequence_Fast(harmonics, "harmonics must be a sequence of integers");
    if (!fast) return 0;
    q->K = (int)PySequence_Fast_GET_SIZE(fast);
    const size_t K = q->K > 0 ? (size_t)q->K : 1;
    q->k = PyMem_Malloc(sizeof(long long) * K);
    q->cos = PyMem_Calloc(K, sizeof(Py_buffer));
    q->sin = PyMem_Calloc(K, sizeof(Py_buffer));
    q->c = PyMem_Malloc(sizeof(double) * BLOCK * K);
    q->s = PyMem_Malloc(sizeof(double) * BLOCK * K);
    if (!q->k || !q->cos || !q->sin || !q->c || !q->s) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        series_close(q);
        return 0;
    }
    q->even = 1;
    for (int i = 0; i < q->K; i++) {
        q->k[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (i >= 2 && q->k[i] - q->k[i - 1] != q->k[1] - q->k[0]) q->even = 0;
    }
    Py_DECREF(fast);
    if (PyErr_Occurred() || !(q->cos_held = get_buffers(cos_list, q->K, n, writable, q->cos))
        || !(q->sin_held = get_buffers(sin_list, q->K, n, writable, q->sin))) {
        series_close(q);
        return 0;
    }
    return 1;
}

/* dealer_harmonics(t, harmonics, scales, cos_out, sin_out): cos_out[i] = rint(cos(k_i theta_t)
 * scales[i]), sin_out[i] likewise, theta_t = 2 pi t / 2^64 (t read as signed). */
static PyObject *dealer_harmonics(PyObject *self, PyObject *args) {
    Py_buffer t;
    PyObject *harm, *scales_obj, *cos_list, *sin_list;
    if (!PyArg_ParseTuple(args, "y*OOOO", &t, &harm, &scales_obj, &cos_list, &sin_list)) return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = t.len / 8;
    double *scales = NULL;
    series q;
    if (!series_open(&q, harm, cos_list, sin_list, n, 1)) goto done;
    scales = PyMem_Malloc(sizeof(double) * (q.K > 0 ? q.K : 1));
    PyObject *fast = scales ? PySequence_Fast(scales_obj, "scales must be a sequence of floats") : PyErr_NoMemory();
    if (!fast) goto done;
    if (PySequence_Fast_GET_SIZE(fast) != q.K) PyErr_SetString(PyExc_ValueError, "one scale per harmonic");
    for (int i = 0; i < q.K && !PyErr_Occurred(); i++) scales[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
    Py_DECREF(fast);
    if (PyErr_Occurred()) goto done;
    Py_BEGIN_ALLOW_THREADS
    const int64_t *tv = t.buf;
    double theta[BLOCK];
    for (Py_ssize_t e0 = 0; e0 < n; e0 += BLOCK) {
        const int m = (int)(n - e0 < BLOCK ? n - e0 : BLOCK);
        for (int e = 0; e < m; e++) theta[e] = (double)tv[e0 + e] * TWO_PI_OVER_RING;
        harmonics_of(theta, m, q.k, q.K, q.even, q.c, q.s);
        for (int i = 0; i < q.K; i++) {
            int64_t *oc = (int64_t *)q.cos[i].buf + e0, *os = (int64_t *)q.sin[i].buf + e0;
            for (int e = 0; e < m; e++) {
                oc[e] = round_even(q.c[i * BLOCK + e] * scales[i]);
                os[e] = round_even(q.s[i * BLOCK + e] * scales[i]);
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    series_close(&q);
    PyMem_Free(scales);
    PyBuffer_Release(&t);
    return result;
}

/* server_series(delta, harmonics, scale, cos_t, sin_t, sin_out, cos_out or None):
 * sin_out = sum_i rint(sin(k_i theta_d) scale) cos_t[i] - rint(cos(k_i theta_d) scale) sin_t[i]
 * and cos_out = sum_i rint(cos .. ) cos_t[i] + rint(sin ..) sin_t[i], mod 2^64. */
static PyObject *server_series(PyObject *self, PyObject *args) {
    Py_buffer delta, sin_out, cos_out = {0};
    PyObject *harm, *cos_list, *sin_list, *cos_out_obj;
    double scale;
    if (!PyArg_ParseTuple(args, "y*OdOOw*O", &delta, &harm, &scale, &cos_list, &sin_list, &sin_out, &cos_out_obj))
        return NULL;
    const int want_cos = cos_out_obj != Py_None;
    PyObject *result = NULL;
    const Py_ssize_t n = delta.len / 8;
    series q = {0};
    if (want_cos && PyObject_GetBuffer(cos_out_obj, &cos_out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (sin_out.len != n * 8 || (want_cos && cos_out.len != n * 8)) {
        PyErr_SetString(PyExc_ValueError, "outputs must match delta");
        goto done;
    }
    if (!series_open(&q, harm, cos_list, sin_list, n, 0)) goto done;
    Py_BEGIN_ALLOW_THREADS
    const int64_t *dv = delta.buf;
    uint64_t *so = sin_out.buf, *cz = want_cos ? cos_out.buf : NULL;
    double theta[BLOCK];
    for (Py_ssize_t e0 = 0; e0 < n; e0 += BLOCK) {
        const int m = (int)(n - e0 < BLOCK ? n - e0 : BLOCK);
        for (int e = 0; e < m; e++) {
            theta[e] = (double)dv[e0 + e] * TWO_PI_OVER_RING;
            so[e0 + e] = 0;
            if (cz) cz[e0 + e] = 0;
        }
        harmonics_of(theta, m, q.k, q.K, q.even, q.c, q.s);
        for (int i = 0; i < q.K; i++) {
            const uint64_t *a = (const uint64_t *)q.cos[i].buf + e0, *b = (const uint64_t *)q.sin[i].buf + e0;
            for (int e = 0; e < m; e++) {
                const uint64_t cd = (uint64_t)round_even(q.c[i * BLOCK + e] * scale);
                const uint64_t sd = (uint64_t)round_even(q.s[i * BLOCK + e] * scale);
                so[e0 + e] += sd * a[e] - cd * b[e];
                if (cz) cz[e0 + e] += cd * a[e] + sd * b[e];
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    series_close(&q);
    PyBuffer_Release(&delta);
    PyBuffer_Release(&sin_out);
    if (cos_out.obj) PyBuffer_Release(&cos_out);
    return result;
}

static PyObject *available(PyObject *self, PyObject *args) {
#ifdef SECPTUNE_X86
    return PyBool_FromLong(cpu_has_aes());
#else
    Py_RETURN_FALSE;
#endif
}

#ifdef SECPTUNE_X86
/* Checks that a buffer holds exactly `count` items of `size` bytes. */
static int check(Py_buffer *b, Py_ssize_t count, Py_ssize_t size, const char *name) {
    if (b->len != count * size) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", name, b->len, count * size);
        return 0;
    }
    return 1;
}

/* The AES key and the CPU, then a batch's shape: n levels, payload P, comparisons [start, stop)
 * of N; sets the exception and returns 0 where they do not hold, else expands the key into s. */
static int ready(Py_buffer *key, int n, int P, Py_ssize_t N, Py_ssize_t start, Py_ssize_t stop, schedule *s) {
    if (!cpu_has_aes()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no AES instructions");
        return 0;
    }
    if (key->len != 16 || P < 1 || P > 2 || n < 1 || n > 64 || start < 0 || stop > N || start > stop) {
        PyErr_SetString(PyExc_ValueError, "bad key, payload, bit count or range");
        return 0;
    }
    key_schedule(s, (const uint8_t *)key->buf);
    return 1;
}

/* The correction words' sizes for n levels, N comparisons and payload P. */
static int check_words(Py_buffer *cw_seed, Py_buffer *cw_value, Py_buffer *cw_t, Py_buffer *cw_final, int n,
                       Py_ssize_t N, int P) {
    return check(cw_seed, (Py_ssize_t)n * N * 2, 8, "cw_seed") && check(cw_value, (Py_ssize_t)n * N * P, 8, "cw_value")
           && check(cw_t, (Py_ssize_t)n * N * 2, 1, "cw_t") && check(cw_final, N * P, 8, "cw_final");
}

static PyObject *keygen(PyObject *self, PyObject *args) {
    Py_buffer key, alpha, beta, root0, root1, cw_seed, cw_value, cw_t, cw_final;
    int P, n;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "y*y*y*iiy*y*w*w*w*w*nn", &key, &alpha, &beta, &P, &n, &root0, &root1, &cw_seed,
                          &cw_value, &cw_t, &cw_final, &start, &stop))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t N = alpha.len / 8;
    schedule s;
    if (ready(&key, n, P, N, start, stop, &s) && check(&beta, N * P, 8, "beta") && check(&root0, 2 * N, 8, "root0")
        && check(&root1, 2 * N, 8, "root1") && check_words(&cw_seed, &cw_value, &cw_t, &cw_final, n, N, P)) {
        Py_BEGIN_ALLOW_THREADS
        keygen_range(&s, alpha.buf, beta.buf, P, n, root0.buf, root1.buf, cw_seed.buf, cw_value.buf, cw_t.buf,
                     cw_final.buf, N, start, stop);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&key); PyBuffer_Release(&alpha); PyBuffer_Release(&beta); PyBuffer_Release(&root0);
    PyBuffer_Release(&root1); PyBuffer_Release(&cw_seed); PyBuffer_Release(&cw_value); PyBuffer_Release(&cw_t);
    PyBuffer_Release(&cw_final);
    return result;
}

static PyObject *evaluate(PyObject *self, PyObject *args) {
    Py_buffer key, root, cw_seed, cw_value, cw_t, cw_final, x, out;
    int party, n, P;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "y*iiiy*y*y*y*y*y*w*nn", &key, &party, &n, &P, &root, &cw_seed, &cw_value, &cw_t,
                          &cw_final, &x, &out, &start, &stop))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t N = x.len / 8;
    schedule s;
    if (party != 0 && party != 1)
        PyErr_SetString(PyExc_ValueError, "the party is 0 or 1");
    else if (ready(&key, n, P, N, start, stop, &s) && check(&root, 2 * N, 8, "root") && check(&out, N * P, 8, "out")
             && check_words(&cw_seed, &cw_value, &cw_t, &cw_final, n, N, P)) {
        Py_BEGIN_ALLOW_THREADS
        eval_range(&s, party, n, P, root.buf, cw_seed.buf, cw_value.buf, cw_t.buf, cw_final.buf, x.buf, out.buf, N,
                   start, stop);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&key); PyBuffer_Release(&root); PyBuffer_Release(&cw_seed); PyBuffer_Release(&cw_value);
    PyBuffer_Release(&cw_t); PyBuffer_Release(&cw_final); PyBuffer_Release(&x); PyBuffer_Release(&out);
    return result;
}
#endif /* SECPTUNE_X86: the DCF's wrappers */

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "Whether this CPU runs the native DCF (x86-64 with AES-NI)."},
#ifdef SECPTUNE_X86            /* elsewhere available() is false and fss.py never asks for them */
    {"keygen", keygen, METH_VARARGS,
     "keygen(key, alpha, beta, payload, n_bits, root0, root1, cw_seed, cw_value, cw_t, cw_final, start, stop)"},
    {"evaluate", evaluate, METH_VARARGS,
     "evaluate(key, party, n_bits, payload, root, cw_seed, cw_value, cw_t, cw_final, x, out, start, stop)"},
#endif
    {"dealer_harmonics", dealer_harmonics, METH_VARARGS,
     "dealer_harmonics(t, harmonics, scales, cos_out, sin_out): the dealer's rounded, scaled cos and sin of each harmonic"},
    {"server_series", server_series, METH_VARARGS,
     "server_series(delta, harmonics, scale, cos_t, sin_t, sin_out, cos_out or None): the servers' harmonic sums"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "Native kernels: DCF key generation and evaluation, harmonic series (see secptune.mpc).", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
