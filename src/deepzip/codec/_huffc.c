/* deepzip's compiled entropy stage: canonical Huffman streams, byte planes and the sparse fill, at compiled speed.
 *
 * Why: the numpy coder (huffman.py, _planes.py) is exact but walks a Python loop per symbol of a sync chunk and
 * makes several full-size temporaries per pass; on all-MiniLM-L6-v2 it ran at 11-36 MB/s where ZipNN and zstd run at
 * hundreds. These functions do the same work in one pass each and produce THE SAME BYTES as the numpy code (the
 * format is docs/FORMAT.md's; nothing here changes it). The Python side (codec/_fast.py) decides what to call.
 *
 * Safety contract: every function returns a status, and any input the fast path is not sure about (a symbol outside
 * the alphabet, a symbol without a code, a code that does not exist in the table, a walk that does not end exactly
 * where the next chunk starts, lengths violating Kraft's inequality...) makes it return -1 *without* an error
 * message: the caller then runs the numpy code on the same input, which either raises its own precise error or (for
 * the few odd streams numpy accepts) returns its own result. So the compiled path never accepts what numpy refuses,
 * never refuses what numpy accepts, and never decides an error message. All reads are bounded by the lengths passed
 * in; all writes by the output sizes the caller allocated from checked sizes.
 *
 * Loaded with ctypes (which releases the GIL during the call), like runtime/_spmv.c; PyInit__huffc only satisfies
 * linkers that want it exported. Built by setup.py as an optional extension with portable flags.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER)
#define EXPORT __declspec(dllexport)
#define INLINE static __forceinline
#else
#define EXPORT __attribute__((visibility("default")))
#define INLINE static inline __attribute__((always_inline))
#endif

#define MAXLEN 24 /* huffman.MAX_CODE_LENGTH */
#define TB 12     /* bits of the flat decode table (4096 entries of 4 bytes: stays in L1) */

INLINE uint64_t load_be64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__GNUC__)
    return __builtin_bswap64(x);
#else
    return ((x & 0xffull) << 56) | ((x & 0xff00ull) << 40) | ((x & 0xff0000ull) << 24) | ((x & 0xff000000ull) << 8) |
           ((x >> 8) & 0xff000000ull) | ((x >> 24) & 0xff0000ull) | ((x >> 40) & 0xff00ull) | (x >> 56);
#endif
}

INLINE void store_be64(uint8_t *p, uint64_t x) {
#if defined(__GNUC__)
    x = __builtin_bswap64(x);
#else
    x = ((x & 0xffull) << 56) | ((x & 0xff00ull) << 40) | ((x & 0xff0000ull) << 24) | ((x & 0xff000000ull) << 8) |
        ((x >> 8) & 0xff000000ull) | ((x >> 24) & 0xff0000ull) | ((x >> 40) & 0xff00ull) | (x >> 56);
#endif
    memcpy(p, &x, 8);
}

INLINE int64_t sym_at(const void *s, int isz, int64_t i) {
    switch (isz) {
    case 1: return ((const uint8_t *)s)[i];
    case 2: return ((const uint16_t *)s)[i];
    case 4: return ((const int32_t *)s)[i];
    default: return ((const int64_t *)s)[i];
    }
}

/* counts[0..256) += histogram of n bytes: four sub-histograms (byte e counts into sub-histogram e % 4), so runs of
 * equal bytes (the exponent plane has a handful of values) do not wait on one counter; uint32 counters flushed every
 * 2**30 bytes. */
static void hist_bytes(const uint8_t *s, int64_t n, int64_t *counts) {
    uint32_t c[4][256];
    for (int64_t base = 0; base < n; base += (int64_t)1 << 30) {
        int64_t end = n - base > ((int64_t)1 << 30) ? base + ((int64_t)1 << 30) : n, i = base;
        memset(c, 0, sizeof c);
        for (; i + 4 <= end; i += 4) {
            c[0][s[i]]++;
            c[1][s[i + 1]]++;
            c[2][s[i + 2]]++;
            c[3][s[i + 3]]++;
        }
        for (; i < end; i++) c[0][s[i]]++;
        for (int b = 0; b < 256; b++) counts[b] += (int64_t)c[0][b] + c[1][b] + c[2][b] + c[3][b];
    }
}

/* counts[0..alphabet) += histogram of n symbols (itemsize isz: 1, 2 unsigned; 4, 8 signed). -1: a symbol outside. */
EXPORT int64_t dz_count(const void *sym, int64_t n, int isz, int64_t alphabet, int64_t *counts) {
    if (isz == 1 && alphabet >= 256) { /* bytes are always inside the alphabet */
        hist_bytes((const uint8_t *)sym, n, counts);
        return 0;
    }
    if (isz == 2 && alphabet >= 65536) { /* uint16 patterns: no range check, two counters a pass */
        const uint16_t *s = (const uint16_t *)sym;
        int64_t i = 0;
        for (; i + 2 <= n; i += 2) {
            counts[s[i]]++;
            counts[s[i + 1]]++;
        }
        if (i < n) counts[s[i]]++;
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t v = sym_at(sym, isz, i);
        if (v < 0 || v >= alphabet) return -1;
        counts[v]++;
    }
    return 0;
}

/* The bits of symbols [i, end) appended to (p, acc, fill): acc holds `fill` (< 8) pending bits, left-aligned. Codes
 * are joined two at a time (four when no code exceeds 14 bits), so the chain through acc and fill is one append per
 * two or four symbols; after each append the whole bytes are stored (8 bytes written, the pending ones rewritten by
 * the next store), no branch. A symbol without a code has length 0: it sets `missing` (the call then fails). */
#define APPEND(c, l)                                                                                                \
    do {                                                                                                            \
        acc |= (uint64_t)(c) << (64 - fill - (l));                                                                  \
        fill += (l);                                                                                                \
        store_be64(p, acc);                                                                                         \
        p += fill >> 3;                                                                                             \
        acc <<= fill & ~7;                                                                                          \
        fill &= 7;                                                                                                  \
    } while (0)
#define ENCODE_RUN(T)                                                                                               \
    do {                                                                                                            \
        const T *sv = (const T *)sym;                                                                               \
        if (quad)                                                                                                   \
            for (; i + 4 <= end; i += 4) {                                                                          \
                uint32_t e0 = tab[sv[i]], e1 = tab[sv[i + 1]], e2 = tab[sv[i + 2]], e3 = tab[sv[i + 3]];            \
                int l0 = (int)(e0 & 31), l1 = (int)(e1 & 31), l2 = (int)(e2 & 31), l3 = (int)(e3 & 31);             \
                missing |= !l0 | !l1 | !l2 | !l3;                                                                   \
                uint64_t c01 = ((uint64_t)(e0 >> 5) << l1) | (e1 >> 5), c23 = ((uint64_t)(e2 >> 5) << l3) | (e3 >> 5); \
                APPEND((c01 << (l2 + l3)) | c23, l0 + l1 + l2 + l3);                                                \
            }                                                                                                       \
        for (; i + 2 <= end; i += 2) {                                                                              \
            uint32_t e0 = tab[sv[i]], e1 = tab[sv[i + 1]];                                                          \
            int l0 = (int)(e0 & 31), l1 = (int)(e1 & 31);                                                           \
            missing |= !l0 | !l1;                                                                                   \
            APPEND(((uint64_t)(e0 >> 5) << l1) | (e1 >> 5), l0 + l1);                                               \
        }                                                                                                           \
        for (; i < end; i++) {                                                                                      \
            uint32_t e0 = tab[sv[i]];                                                                               \
            missing |= !(e0 & 31);                                                                                  \
            APPEND(e0 >> 5, (int)(e0 & 31));                                                                        \
        }                                                                                                           \
    } while (0)

/* Huffman-code n symbols MSB first with codes[] / lens[] (canonical, right-aligned, lens <= 24), into out (out_bytes
 * long: at least ceil(nbits / 8) + 3 * max(sync, 1024) + 16). offsets[j] = bit offset of symbol (j + 1) * sync.
 * Returns nbits, or -1: a symbol outside the alphabet or without a code, or out too short. */
EXPORT int64_t dz_encode(const void *sym, int64_t n, int isz, const uint64_t *codes, const uint8_t *lens,
                         int64_t alphabet, int64_t sync, uint8_t *out, int64_t out_bytes, int64_t *offsets) {
    if (alphabet <= 0) return n ? -1 : 0;
    int lmax = 0;
    for (int64_t a = 0; a < alphabet; a++) {
        if (lens[a] > MAXLEN || (codes[a] >> lens[a]) != 0) return -1;
        if (lens[a] > lmax) lmax = lens[a];
    }
    /* symbols that may exceed the alphabet are checked first (bytes under a 256-symbol alphabet never do) */
    int need_range = !((isz == 1 && alphabet >= 256) || (isz == 2 && alphabet >= 65536));
    if (need_range)
        for (int64_t i = 0; i < n; i++) {
            int64_t v = sym_at(sym, isz, i);
            if (v < 0 || v >= alphabet) return -1;
        }
    uint32_t *tab = (uint32_t *)malloc((size_t)alphabet * sizeof(uint32_t));
    if (!tab) return -1;
    for (int64_t a = 0; a < alphabet; a++) tab[a] = (uint32_t)(codes[a] << 5) | lens[a]; /* code, length: one load */
    const int quad = lmax <= 14;
    const int64_t piece = sync > 0 ? sync : 1024;
    uint8_t *p = out;
    uint64_t acc = 0;
    int fill = 0, missing = 0;
    int64_t i = 0, j = 0;
    while (i < n) {
        if (sync > 0 && i > 0) offsets[j++] = (int64_t)(p - out) * 8 + fill;
        int64_t end = n - i > piece ? i + piece : n;
        if ((out + out_bytes) - p < (end - i) * 3 + 16) { free(tab); return -1; } /* 24 bits a symbol at most */
        switch (isz) {
        case 1: ENCODE_RUN(uint8_t); break;
        case 2: ENCODE_RUN(uint16_t); break;
        case 4: ENCODE_RUN(int32_t); break;
        default: ENCODE_RUN(int64_t); break;
        }
    }
    if (fill > 0) store_be64(p, acc); /* the last bits, zero-padded */
    free(tab);
    return missing ? -1 : (int64_t)(p - out) * 8 + fill;
}

/* ------------------------------------------------------------------------------------------------- code lengths */

typedef struct {
    int64_t count;
    int64_t sym;
} Leaf;

static int leaf_cmp(const void *a, const void *b) {
    const Leaf *x = (const Leaf *)a, *y = (const Leaf *)b;
    if (x->count != y->count) return x->count < y->count ? -1 : 1;
    return x->sym < y->sym ? -1 : x->sym > y->sym; /* stable: ties in symbol order */
}

/* huffman.code_lengths, step for step (the same lengths, ties included): package-merge over levels =
 * min(max_length, n - 1); each level merges the leaves with the pairwise sums of the level below, leaves before
 * packages of equal weight; then the first 2n - 2 items of the top level are selected, a selected package selecting
 * its two children one level down. Returns 0, or -1 (more used symbols than 2**max_length, or no memory). */
EXPORT int64_t dz_code_lengths(const int64_t *counts, int64_t size, int max_length, uint8_t *lengths) {
    int64_t n = 0;
    for (int64_t a = 0; a < size; a++) {
        if (counts[a] < 0) return -1;
        lengths[a] = 0;
        n += counts[a] != 0;
    }
    if (n == 0) return 0;
    if (n == 1) {
        for (int64_t a = 0; a < size; a++)
            if (counts[a]) lengths[a] = 1;
        return 0;
    }
    if (max_length < 1 || max_length > 32 || (max_length < 62 && n > ((int64_t)1 << max_length))) return -1;
    Leaf *leaf = (Leaf *)malloc((size_t)n * sizeof(Leaf));
    int levels = (int)(max_length < n - 1 ? max_length : n - 1);
    int64_t *w = (int64_t *)malloc((size_t)n * sizeof(int64_t));
    int64_t *prev = (int64_t *)malloc((size_t)(2 * n) * sizeof(int64_t));
    int64_t *next = (int64_t *)malloc((size_t)(2 * n) * sizeof(int64_t));
    uint8_t *isleaf = (uint8_t *)malloc((size_t)levels * (size_t)(2 * n)); /* per merged level: leaf or package */
    int64_t *lsize = (int64_t *)malloc((size_t)levels * sizeof(int64_t));
    int64_t *depth = (int64_t *)calloc((size_t)(n + 1), sizeof(int64_t));
    int64_t r = -1;
    if (!leaf || !w || !prev || !next || !isleaf || !lsize || !depth) goto done;
    int64_t k = 0;
    for (int64_t a = 0; a < size; a++)
        if (counts[a]) leaf[k].count = counts[a], leaf[k].sym = a, k++;
    qsort(leaf, (size_t)n, sizeof(Leaf), leaf_cmp);
    for (k = 0; k < n; k++) w[k] = prev[k] = leaf[k].count;
    int64_t psize = n;
    /* level 0 (the deepest) is the leaves alone */
    lsize[0] = n;
    memset(isleaf, 1, (size_t)n);
    for (int l = 1; l < levels; l++) {
        int64_t npk = psize / 2, i = 0, j = 0, o = 0;
        uint8_t *fl = isleaf + (size_t)l * (size_t)(2 * n);
        while (i < n || j < npk) {
            if (j >= npk || (i < n && w[i] <= prev[2 * j] + prev[2 * j + 1])) {
                next[o] = w[i++];
                fl[o++] = 1;
            } else {
                next[o] = prev[2 * j] + prev[2 * j + 1];
                j++;
                fl[o++] = 0;
            }
        }
        lsize[l] = o;
        int64_t *t = prev;
        prev = next;
        next = t;
        psize = o;
    }
    int64_t take = 2 * n - 2;
    for (int l = levels - 1; l >= 0; l--) {
        const uint8_t *fl = isleaf + (size_t)l * (size_t)(2 * n);
        int64_t lim = take < lsize[l] ? take : lsize[l], nleaf = 0;
        for (int64_t q = 0; q < lim; q++) nleaf += fl[q];
        depth[0] += 1;
        depth[nleaf] -= 1;
        take = 2 * (take - nleaf);
    }
    int64_t d = 0;
    for (k = 0; k < n; k++) {
        d += depth[k];
        lengths[leaf[k].sym] = (uint8_t)d;
    }
    r = 0;
done:
    free(leaf), free(w), free(prev), free(next), free(isleaf), free(lsize), free(depth);
    return r;
}

/* ---------------------------------------------------------------------------------------------------- decoding */

typedef struct {
    uint32_t tab[1 << TB]; /* (symbol << 8) | length for windows whose first TB bits start a code of <= TB bits */
    int tb, lmax;
    int64_t nused;
    int64_t *left;  /* (nused + 1) codes left-aligned to lmax bits, sorted, then the end of the last one */
    int32_t *ssym;  /* symbols by (length, symbol) */
    uint8_t *slen;
} Table;

static void table_free(Table *t) {
    free(t->left);
    free(t->ssym);
    free(t->slen);
}

/* The canonical code of lens[0..alphabet): as huffman._sorted_codes / _Lookup. 0 ok, -1: no code, > 24 bits, Kraft
 * violated, or symbols too large for the table's 24 bits. */
static int table_build(Table *t, const uint8_t *lens, int64_t alphabet) {
    memset(t, 0, sizeof(*t));
    if (alphabet > (1 << 24)) return -1;
    int64_t bylen[MAXLEN + 1] = {0};
    for (int64_t a = 0; a < alphabet; a++) {
        if (lens[a] > MAXLEN) return -1;
        bylen[lens[a]]++;
    }
    int64_t nused = alphabet - bylen[0];
    if (nused == 0) return -1;
    int lmax = 0;
    for (int l = 1; l <= MAXLEN; l++)
        if (bylen[l]) lmax = l;
    int64_t kraft = 0;
    for (int l = 1; l <= lmax; l++) kraft += bylen[l] << (lmax - l);
    if (kraft > ((int64_t)1 << lmax)) return -1;
    t->left = (int64_t *)malloc((size_t)(nused + 1) * sizeof(int64_t));
    t->ssym = (int32_t *)malloc((size_t)(nused + 1) * sizeof(int32_t));
    t->slen = (uint8_t *)malloc((size_t)(nused + 1));
    if (!t->left || !t->ssym || !t->slen) { table_free(t); return -1; }
    int64_t start[MAXLEN + 2];
    start[1] = 0;
    for (int l = 1; l <= MAXLEN; l++) start[l + 1] = start[l] + bylen[l];
    for (int64_t a = 0; a < alphabet; a++) /* stable: by length, then symbol */
        if (lens[a]) {
            int64_t k = start[lens[a]]++;
            t->ssym[k] = (int32_t)a;
            t->slen[k] = lens[a];
        }
    int64_t acc = 0;
    for (int64_t k = 0; k < nused; k++) {
        t->left[k] = acc;
        acc += (int64_t)1 << (lmax - t->slen[k]);
    }
    t->left[nused] = acc;
    t->ssym[nused] = 0;
    t->slen[nused] = 0;
    t->nused = nused;
    t->lmax = lmax;
    t->tb = lmax < TB ? lmax : TB;
    /* flat table: windows past the last short code, or starting a long one, get length 0 (-> slow path) */
    for (int64_t k = 0; k < nused && t->slen[k] <= t->tb; k++) {
        int64_t lo = t->left[k] >> (lmax - t->tb), reps = (int64_t)1 << (t->tb - t->slen[k]);
        for (int64_t r = 0; r < reps; r++) t->tab[lo + r] = ((uint32_t)t->ssym[k] << 8) | t->slen[k];
    }
    return 0;
}

/* (symbol << 8) | length of the code that a left-aligned 32-bit window starts; length 0: no code */
static uint32_t slow_lookup(const Table *t, uint32_t w) {
    if (t->lmax <= t->tb) return 0;
    int64_t v = (int64_t)(w >> (32 - t->lmax));
    int64_t lo = 0, hi = t->nused + 1; /* upper_bound(left, v) - 1 */
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (t->left[mid] <= v) lo = mid + 1; else hi = mid;
    }
    int64_t j = lo - 1;
    return ((uint32_t)t->ssym[j] << 8) | t->slen[j];
}

/* the 32 bits from bit pos on, left-aligned, bytes at or past nbytes read as 0 */
INLINE uint32_t window_safe(const uint8_t *d, int64_t nbytes, uint64_t pos) {
    uint64_t b = pos >> 3;
    uint64_t x = 0;
    for (int k = 0; k < 8; k++) x = (x << 8) | (b + k < (uint64_t)nbytes ? d[b + k] : 0);
    return (uint32_t)((x << (pos & 7)) >> 32);
}

INLINE uint32_t window_fast(const uint8_t *d, uint64_t pos) {
    return (uint32_t)((load_be64(d + (pos >> 3)) << (pos & 7)) >> 32);
}

#define DECODE_FUNCS(T, SUFFIX)                                                                                      \
    /* one chunk, m symbols from bit pos, bounds-checked reads; returns the end position or -1 on a missing code */ \
    static int64_t walk_safe_##SUFFIX(const Table *t, const uint8_t *d, int64_t nbytes, uint64_t pos, int64_t m,    \
                                      T *out) {                                                                     \
        const int sh = 32 - t->tb;                                                                                  \
        for (int64_t j = 0; j < m; j++) {                                                                           \
            uint32_t w = window_safe(d, nbytes, pos);                                                               \
            uint32_t e = t->tab[w >> sh];                                                                           \
            if (!(e & 255)) {                                                                                       \
                e = slow_lookup(t, w);                                                                              \
                if (!(e & 255)) return -1;                                                                          \
            }                                                                                                       \
            out[j] = (T)(e >> 8);                                                                                   \
            pos += e & 255;                                                                                         \
        }                                                                                                           \
        return (int64_t)pos;                                                                                        \
    }                                                                                                               \
    /* four chunks of m symbols in lockstep (independent dependency chains), unchecked reads: the caller made sure \
     * every read of up to m * 24 bits past each start stays inside the data */                                    \
    static int walk4_##SUFFIX(const Table *t, const uint8_t *d, uint64_t *pos, int64_t m, T *o0, T *o1, T *o2,      \
                              T *o3) {                                                                              \
        const int sh = 32 - t->tb;                                                                                  \
        uint64_t p0 = pos[0], p1 = pos[1], p2 = pos[2], p3 = pos[3];                                                \
        for (int64_t j = 0; j < m; j++) {                                                                           \
            uint32_t w0 = window_fast(d, p0), w1 = window_fast(d, p1), w2 = window_fast(d, p2),                     \
                     w3 = window_fast(d, p3);                                                                       \
            uint32_t e0 = t->tab[w0 >> sh], e1 = t->tab[w1 >> sh], e2 = t->tab[w2 >> sh], e3 = t->tab[w3 >> sh];    \
            if (!((e0 & 255) && (e1 & 255) && (e2 & 255) && (e3 & 255))) {                                          \
                if (!(e0 & 255) && !((e0 = slow_lookup(t, w0)) & 255)) return -1;                                   \
                if (!(e1 & 255) && !((e1 = slow_lookup(t, w1)) & 255)) return -1;                                   \
                if (!(e2 & 255) && !((e2 = slow_lookup(t, w2)) & 255)) return -1;                                   \
                if (!(e3 & 255) && !((e3 = slow_lookup(t, w3)) & 255)) return -1;                                   \
            }                                                                                                       \
            o0[j] = (T)(e0 >> 8);                                                                                   \
            o1[j] = (T)(e1 >> 8);                                                                                   \
            o2[j] = (T)(e2 >> 8);                                                                                   \
            o3[j] = (T)(e3 >> 8);                                                                                   \
            p0 += e0 & 255;                                                                                         \
            p1 += e1 & 255;                                                                                         \
            p2 += e2 & 255;                                                                                         \
            p3 += e3 & 255;                                                                                         \
        }                                                                                                           \
        pos[0] = p0, pos[1] = p1, pos[2] = p2, pos[3] = p3;                                                         \
        return 0;                                                                                                   \
    }                                                                                                               \
    static int decode_##SUFFIX(const Table *t, const uint8_t *d, int64_t nbytes, int64_t nbits, int64_t count,      \
                               const int64_t *starts, int64_t nchunks, int64_t sync, T *out) {                      \
        int64_t c = 0;                                                                                              \
        for (; c + 4 <= nchunks; c += 4) {                                                                          \
            int64_t m = sync; /* four full chunks whose reads all stay inside the data */                           \
            if ((c + 3) * sync + m > count) break;                                                                  \
            if ((starts[c + 3] + m * MAXLEN) / 8 + 8 > nbytes) break;                                               \
            uint64_t pos[4] = {(uint64_t)starts[c], (uint64_t)starts[c + 1], (uint64_t)starts[c + 2],               \
                               (uint64_t)starts[c + 3]};                                                            \
            if (walk4_##SUFFIX(t, d, pos, m, out + c * sync, out + (c + 1) * sync, out + (c + 2) * sync,            \
                               out + (c + 3) * sync))                                                               \
                return -1;                                                                                          \
            for (int q = 0; q < 4; q++) {                                                                           \
                int64_t want = c + q + 1 < nchunks ? starts[c + q + 1] : nbits;                                     \
                if ((int64_t)pos[q] != want) return -1;                                                             \
            }                                                                                                       \
        }                                                                                                           \
        for (; c < nchunks; c++) {                                                                                  \
            int64_t m = count - c * sync < sync ? count - c * sync : sync;                                          \
            int64_t want = c + 1 < nchunks ? starts[c + 1] : nbits;                                                 \
            if (walk_safe_##SUFFIX(t, d, nbytes, (uint64_t)starts[c], m, out + c * sync) != want) return -1;        \
        }                                                                                                           \
        return 0;                                                                                                   \
    }

DECODE_FUNCS(uint8_t, u8)
DECODE_FUNCS(uint16_t, u16)
DECODE_FUNCS(int32_t, i32)

/* Byte symbols (planes, alphabet <= 256) decode several at a time: the first MB bits of a window name up to four
 * symbols whose codes all lie inside them (the exponent plane of trained weights averages ~2.6 bits a code, so a
 * lookup yields 3-4 symbols). Entries with n = 0 (the first code is longer than MB bits, or no code) take the single
 * symbol path. The result is the same symbol sequence: a prefix code's symbol depends only on its own bits. */
#define MB 11
typedef struct {
    uint8_t s[4]; /* the symbols, in order */
    uint8_t len;  /* bits of all n codes */
    uint8_t n;    /* symbols, 0..4 */
    uint8_t pad[2];
} Multi;

static void multi_build(const Table *t, Multi *m) {
    const int sh = 32 - t->tb;
    for (uint32_t x = 0; x < (1u << MB); x++) {
        uint32_t w = x << (32 - MB);
        int used = 0, n = 0;
        Multi e = {{0, 0, 0, 0}, 0, 0, {0, 0}};
        while (n < 4) {
            uint32_t te = t->tab[(uint32_t)(w << used) >> sh];
            int l = (int)(te & 255);
            if (l == 0 || used + l > MB) break;
            e.s[n++] = (uint8_t)(te >> 8);
            used += l;
        }
        e.len = (uint8_t)used;
        e.n = (uint8_t)n;
        m[x] = e;
    }
}

/* one symbol at pos through the single table: its (symbol << 8) | length, length 0: no code */
INLINE uint32_t single(const Table *t, uint32_t w) {
    uint32_t e = t->tab[w >> (32 - t->tb)];
    return (e & 255) ? e : slow_lookup(t, w);
}

/* r symbols of one chunk from pos, reads unchecked (the caller bounds them); the end position, or -1 */
static int64_t chain_multi(const Table *t, const Multi *m, const uint8_t *d, uint64_t pos, int64_t r, uint8_t *o) {
    while (r >= 4) {
        uint32_t w = window_fast(d, pos);
        const Multi *e = &m[w >> (32 - MB)];
        if (e->n) {
            memcpy(o, e->s, 4); /* four bytes stored, n kept: r >= 4 keeps the store inside the chunk */
            o += e->n;
            r -= e->n;
            pos += e->len;
        } else {
            uint32_t e1 = single(t, w);
            if (!(e1 & 255)) return -1;
            *o++ = (uint8_t)(e1 >> 8);
            r--;
            pos += e1 & 255;
        }
    }
    for (; r > 0; r--) {
        uint32_t e1 = single(t, window_fast(d, pos));
        if (!(e1 & 255)) return -1;
        *o++ = (uint8_t)(e1 >> 8);
        pos += e1 & 255;
    }
    return (int64_t)pos;
}

/* One round of one chunk: a 64-bit window loaded once (at least 57 valid bits), then up to four multi-symbol lookups
 * straight from it (4 x MB <= 57 bits), so the chain through the chunk's position is one memory load a round, not one
 * a lookup. A lookup whose first code is longer than MB bits (n = 0) ends the round early; that one symbol then takes
 * the single-symbol path. A round yields at most 16 symbols (four stored bytes a lookup): r >= 16 keeps the stores
 * inside the chunk. */
#define MROUND(q)                                                                                                   \
    do {                                                                                                            \
        uint64_t w = load_be64(d + (p##q >> 3)) << (p##q & 7);                                                      \
        int k = 0;                                                                                                  \
        for (; k < 4; k++) {                                                                                        \
            const Multi *e = &m[w >> (64 - MB)];                                                                    \
            if (!e->n) break;                                                                                       \
            memcpy(o##q, e->s, 4);                                                                                  \
            o##q += e->n;                                                                                           \
            r##q -= e->n;                                                                                           \
            p##q += e->len;                                                                                         \
            w <<= e->len;                                                                                           \
        }                                                                                                           \
        if (k < 4) {                                                                                                \
            uint32_t e1 = single(t, window_fast(d, p##q));                                                          \
            if (!(e1 & 255)) goto fail;                                                                             \
            *o##q++ = (uint8_t)(e1 >> 8);                                                                           \
            r##q--;                                                                                                 \
            p##q += e1 & 255;                                                                                       \
        }                                                                                                           \
    } while (0)

/* decode_u8 with the multi-symbol table: four chunks in lockstep (independent dependency chains, each in its own
 * registers) while all have four symbols left, then each chunk's rest alone */
static int decode_multi(const Table *t, const uint8_t *d, int64_t nbytes, int64_t nbits, int64_t count,
                        const int64_t *starts, int64_t nchunks, int64_t sync, uint8_t *out) {
    Multi *m = (Multi *)malloc(sizeof(Multi) << MB);
    if (!m) return -1;
    multi_build(t, m);
    int64_t c = 0;
    for (; c + 4 <= nchunks; c += 4) {
        if ((c + 3) * sync + sync > count) break;
        if ((starts[c + 3] + sync * MAXLEN) / 8 + 8 > nbytes) break;
        uint64_t p0 = (uint64_t)starts[c], p1 = (uint64_t)starts[c + 1], p2 = (uint64_t)starts[c + 2],
                 p3 = (uint64_t)starts[c + 3];
        uint8_t *o0 = out + c * sync, *o1 = o0 + sync, *o2 = o1 + sync, *o3 = o2 + sync;
        int64_t r0 = sync, r1 = sync, r2 = sync, r3 = sync;
        while (r0 >= 16 && r1 >= 16 && r2 >= 16 && r3 >= 16) {
            MROUND(0);
            MROUND(1);
            MROUND(2);
            MROUND(3);
        }
        int64_t want3 = c + 4 < nchunks ? starts[c + 4] : nbits;
        if (chain_multi(t, m, d, p0, r0, o0) != starts[c + 1] || chain_multi(t, m, d, p1, r1, o1) != starts[c + 2] ||
            chain_multi(t, m, d, p2, r2, o2) != starts[c + 3] || chain_multi(t, m, d, p3, r3, o3) != want3)
            goto fail;
    }
    free(m);
    for (; c < nchunks; c++) { /* the last chunks: bounds-checked reads */
        int64_t n = count - c * sync < sync ? count - c * sync : sync;
        int64_t want = c + 1 < nchunks ? starts[c + 1] : nbits;
        if (walk_safe_u8(t, d, nbytes, (uint64_t)starts[c], n, out + c * sync) != want) return -1;
    }
    return 0;
fail:
    free(m);
    return -1;
}

/* Decode count symbols of the canonical code of lens[0..alphabet) from data (nbytes = ceil(nbits / 8)), in nchunks
 * chunks of sync symbols starting at starts[c] (starts[0] = 0; one chunk of count symbols without sync offsets), into
 * out (osz bytes a symbol: 1, 2 or 4). Every chunk must decode with real codes and end exactly where the next one
 * starts, the last at nbits. Returns 0, or -1 (the caller runs the numpy decoder, which raises or decides). */
EXPORT int64_t dz_decode(const uint8_t *data, int64_t nbytes, int64_t nbits, const uint8_t *lens, int64_t alphabet,
                         int64_t count, const int64_t *starts, int64_t nchunks, int64_t sync, void *out, int osz) {
    if (count <= 0 || nchunks <= 0 || sync <= 0 || nbits > 8 * nbytes || nbytes > (nbits + 7) / 8) return -1;
    if (nchunks != (count + sync - 1) / sync || starts[0] != 0) return -1;
    for (int64_t c = 1; c < nchunks; c++)
        if (starts[c] <= starts[c - 1] || starts[c] >= nbits) return -1;
    Table *t = (Table *)malloc(sizeof(Table));
    if (!t) return -1;
    if (table_build(t, lens, alphabet)) { free(t); return -1; }
    if ((osz == 1 && alphabet > 256) || (osz == 2 && alphabet > 65536)) { table_free(t); free(t); return -1; }
    int r = osz == 1 && count >= (1 << 14) ? decode_multi(t, data, nbytes, nbits, count, starts, nchunks, sync, (uint8_t *)out)
            : osz == 1 ? decode_u8(t, data, nbytes, nbits, count, starts, nchunks, sync, (uint8_t *)out)
            : osz == 2 ? decode_u16(t, data, nbytes, nbits, count, starts, nchunks, sync, (uint16_t *)out)
            : osz == 4 ? decode_i32(t, data, nbytes, nbits, count, starts, nchunks, sync, (int32_t *)out)
                       : -1;
    table_free(t);
    free(t);
    return r;
}

/* ------------------------------------------------------------------------------------------------- byte planes */

/* rotate left by one bit (floats: the sign to bit 0, the exponent to the top byte), or back */
#define ROTL(T, NB, x) ((T)(((x) << 1) | ((x) >> ((NB) - 1))))
#define ROTR(T, NB, x) ((T)(((x) >> 1) | ((x) << ((NB) - 1))))

/* planes[i * n + e] = byte i (little-endian) of value e, rotated first when rot; counts[i * 256 + b] += histogram of
 * plane i (counts zeroed by the caller). Two passes: the split alone (a loop the compiler vectorises), then each
 * plane's histogram (about 30% faster on bfloat16 blocks than one pass doing both). */
#define SPLIT_LOOP(T, NB, ROT)                                                                                      \
    do {                                                                                                            \
        const T *v = (const T *)vals;                                                                               \
        for (int64_t e = 0; e < n; e++) {                                                                           \
            T x = v[e];                                                                                             \
            if (ROT) x = ROTL(T, NB, x);                                                                            \
            for (int i = 0; i < (int)sizeof(T); i++) planes[i * n + e] = (uint8_t)(x >> (8 * i));                  \
        }                                                                                                           \
    } while (0)
EXPORT int64_t dz_split(const uint8_t *vals, int64_t n, int isz, int rot, uint8_t *planes, int64_t *counts) {
    switch (isz * 2 + !!rot) {
    case 4: SPLIT_LOOP(uint16_t, 16, 0); break;
    case 5: SPLIT_LOOP(uint16_t, 16, 1); break;
    case 8: SPLIT_LOOP(uint32_t, 32, 0); break;
    case 9: SPLIT_LOOP(uint32_t, 32, 1); break;
    case 16: SPLIT_LOOP(uint64_t, 64, 0); break;
    case 17: SPLIT_LOOP(uint64_t, 64, 1); break;
    case 2: case 3: memcpy(planes, vals, (size_t)n); break;
    default: return -1;
    }
    for (int i = 0; i < isz; i++) hist_bytes(planes + (int64_t)i * n, n, counts + i * 256);
    return 0;
}

/* the inverse of dz_split's planes: vals[e] = the value whose byte i is planes[i][e], rotated back when rot. Each plane
 * is its own pointer, so a raw plane is read straight from its section (no copy into a block of planes first). */
EXPORT void dz_merge(const uint8_t *const *planes, int64_t n, int isz, int rot, uint8_t *vals) {
    if (isz == 2) {
        const uint8_t *q0 = planes[0], *q1 = planes[1];
        uint16_t *v = (uint16_t *)vals;
        for (int64_t e = 0; e < n; e++) {
            uint16_t x = (uint16_t)(q0[e] | (q1[e] << 8));
            v[e] = rot ? ROTR(uint16_t, 16, x) : x;
        }
    } else if (isz == 4) {
        const uint8_t *q0 = planes[0], *q1 = planes[1], *q2 = planes[2], *q3 = planes[3];
        uint32_t *v = (uint32_t *)vals;
        for (int64_t e = 0; e < n; e++) {
            uint32_t x = (uint32_t)q0[e] | ((uint32_t)q1[e] << 8) | ((uint32_t)q2[e] << 16) | ((uint32_t)q3[e] << 24);
            v[e] = rot ? ROTR(uint32_t, 32, x) : x;
        }
    } else if (isz == 8) {
        uint64_t *v = (uint64_t *)vals;
        for (int64_t e = 0; e < n; e++) {
            uint64_t x = 0;
            for (int i = 0; i < 8; i++) x |= (uint64_t)planes[i][e] << (8 * i);
            v[e] = rot ? ROTR(uint64_t, 64, x) : x;
        }
    } else {
        memcpy(vals, planes[0], (size_t)n);
    }
}

/* ------------------------------------------------------------------------------------------------ sparse tensors */

/* out[p] = cb[s] for every kept entry of a sparse tensor (out zeroed by the caller, n floats): entry j sits gaps[j] + 1
 * positions after the previous one (the first at gaps[0]); symbol k is a filler. Returns the kept count, or -1 when an
 * entry falls outside the tensor, a symbol exceeds k, or the trailing zero run is 2**width or longer (the caller runs
 * the numpy decoder for the error). */
EXPORT int64_t dz_sparse_fill(float *out, int64_t n, const float *cb, int64_t k, const void *sym, int ssz,
                              const void *gaps, int gsz, int64_t entries, int64_t width) {
    int64_t p = -1, kept = 0;
    for (int64_t j = 0; j < entries; j++) {
        int64_t g = sym_at(gaps, gsz, j), s = sym_at(sym, ssz, j);
        if (g < 0 || s < 0 || s > k) return -1;
        p += g + 1;
        if (p >= n) return -1;
        if (s < k) {
            out[p] = cb[s];
            kept++;
        }
    }
    if (n - 1 - p >= ((int64_t)1 << width)) return -1;
    return kept;
}

/* ------------------------------------------------------------------------------------------------------ crc32 */

/* zlib's crc32 (the reflected 0xEDB88320 polynomial every section checksum uses) of n bytes, n a multiple of 16 and at
 * least 64, by carry-less multiplication: four 128-bit lanes folded 64 bytes at a time, then into one, then the
 * Barrett reduction to 32 bits (V. Gopal, E. Ozturk et al., "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction", Intel 2009; the constants are the paper's, as in Chromium's zlib crc32_simd.c). About ten
 * times zlib's table-driven speed, which the section checksums otherwise cost on every read and write. Returns the
 * crc (continuing from `crc`, zlib's convention), or -1 where the CPU lacks PCLMUL / SSE4.1 or the compiler is not
 * GCC / Clang on x86-64: the caller then runs zlib.crc32 (the same value; tests compare them). The < 16-byte tail is
 * the caller's, through zlib.crc32(tail, crc). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc32_fold(const uint8_t *buf, int64_t len, uint32_t crc) {
    static const uint64_t k1k2[2] __attribute__((aligned(16))) = {0x0154442bd4ull, 0x01c6e41596ull};
    static const uint64_t k3k4[2] __attribute__((aligned(16))) = {0x01751997d0ull, 0x00ccaa009eull};
    static const uint64_t k5k0[2] __attribute__((aligned(16))) = {0x0163cd6124ull, 0x0000000000ull};
    static const uint64_t poly[2] __attribute__((aligned(16))) = {0x01db710641ull, 0x01f7011641ull};
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;
    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = _mm_load_si128((const __m128i *)k1k2);
    buf += 64;
    len -= 64;
    while (len >= 64) { /* four lanes folded in parallel */
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64;
        len -= 64;
    }
    x0 = _mm_load_si128((const __m128i *)k3k4); /* the four lanes into one */
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (len >= 16) { /* the remaining 16-byte blocks */
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10); /* 128 bits to 64 */
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_loadl_epi64((const __m128i *)k5k0);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_load_si128((const __m128i *)poly); /* Barrett reduction to 32 bits */
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

EXPORT int64_t dz_crc32(const uint8_t *buf, int64_t n, uint32_t crc) {
    if (n < 64 || n % 16 || !__builtin_cpu_supports("pclmul") || !__builtin_cpu_supports("sse4.1")) return -1;
    return (int64_t)(uint32_t)~crc32_fold(buf, n, ~crc);
}
#else
EXPORT int64_t dz_crc32(const uint8_t *buf, int64_t n, uint32_t crc) {
    (void)buf, (void)n, (void)crc;
    return -1;
}
#endif

#if defined(__GNUC__) || defined(_MSC_VER)
EXPORT void *PyInit__huffc(void) { return 0; }
#endif
