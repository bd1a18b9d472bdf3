// Microbenchmark: the int8-activation products (ck_matmul_q8, with the activations quantized in the timed region
// as CausalKernels.matmul does) against the fp32-activation products (ck_matmul) on the weight tensors of GGUF
// files, per weight type, alternating pass by pass in one run, against the read-bandwidth floor measured in the
// same run. Built and run by Benchmarks/q8-kernels.sh. A benchmark, not a test.
//
//   q8_kernels [-t THREADS] [-r REPEATS] [-n TOKENS,...] [--isa N] [--int8-only] FILE.gguf...
//
// A pass runs one product (n tokens) over every 2-D tensor of a type (the token embedding excluded), tensor after
// tensor like a decode step, rows split over THREADS threads as CausalKernels.matmul splits them (chunks of whole
// 16-row tiles, 4 per thread for n < 8, 8 per thread otherwise, claimed dynamically from a ck_pool). Reported per
// path: best and median pass time, weight GB/s (best) and that as a fraction of the floor (ck_read_sum over
// 1 GiB with THREADS threads, best of 5), and for n > 1 tokens per second of the pass.
#define _GNU_SOURCE
#include "CCausalKernels.h"
#include "ck_membw.h"
#include "ck_q8.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Minimal GGUF tensor table reader (metadata values skipped; general.alignment honoured).
typedef struct { const uint8_t *p, *end; int bad; } rd;
static uint64_t rd_u(rd *r, int n) {
    if (r->p + n > r->end) { r->bad = 1; return 0; }
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)r->p[i] << (8 * i);
    r->p += n;
    return v;
}
static void rd_skip(rd *r, uint64_t n) { if ((uint64_t)(r->end - r->p) < n) r->bad = 1; else r->p += n; }
static const int scalar_size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static void skip_value(rd *r, uint32_t t) {
    if (t == 8) { rd_skip(r, rd_u(r, 8)); return; }
    if (t == 9) {
        const uint32_t et = (uint32_t)rd_u(r, 4);
        const uint64_t n = rd_u(r, 8);
        if (et == 8 || et == 9) for (uint64_t i = 0; i < n && !r->bad; i++) skip_value(r, et);
        else if (et < 13) rd_skip(r, n * (uint64_t)scalar_size[et]);
        else r->bad = 1;
        return;
    }
    if (t < 13 && scalar_size[t]) rd_skip(r, (uint64_t)scalar_size[t]);
    else r->bad = 1;
}

typedef struct { char name[96]; int type; int64_t rows, cols; const uint8_t *data; size_t bytes; } tensor;

static int load_gguf(const char *path, tensor **out, int *count) {
    const int fd = open(path, O_RDONLY);
    if (fd < 0) { perror(path); return -1; }
    struct stat st;
    fstat(fd, &st);
    const uint8_t *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) { perror(path); return -1; }
    rd r = {base, base + st.st_size, 0};
    if (rd_u(&r, 4) != 0x46554747u) { fprintf(stderr, "%s: not a GGUF file\n", path); return -1; }
    rd_u(&r, 4);
    const uint64_t nt = rd_u(&r, 8), nkv = rd_u(&r, 8);
    uint64_t align = 32;
    for (uint64_t i = 0; i < nkv && !r.bad; i++) {
        const uint64_t kl = rd_u(&r, 8);
        const char *key = (const char *)r.p;
        rd_skip(&r, kl);
        const uint32_t t = (uint32_t)rd_u(&r, 4);
        if (kl == 17 && !memcmp(key, "general.alignment", 17) && t == 4) align = rd_u(&r, 4);
        else skip_value(&r, t);
    }
    tensor *ts = calloc(nt, sizeof(tensor));
    uint64_t *offs = calloc(nt, sizeof(uint64_t));
    for (uint64_t i = 0; i < nt && !r.bad; i++) {
        const uint64_t nl = rd_u(&r, 8);
        snprintf(ts[i].name, sizeof ts[i].name, "%.*s", (int)(nl < 95 ? nl : 95), (const char *)r.p);
        rd_skip(&r, nl);
        const uint32_t nd = (uint32_t)rd_u(&r, 4);
        int64_t dims[4] = {1, 1, 1, 1};
        for (uint32_t d = 0; d < nd; d++) { const uint64_t v = rd_u(&r, 8); if (d < 4) dims[d] = (int64_t)v; }
        ts[i].type = (int)rd_u(&r, 4);
        offs[i] = rd_u(&r, 8);
        ts[i].cols = dims[0];
        ts[i].rows = nd == 2 ? dims[1] : 0;
    }
    if (r.bad) { fprintf(stderr, "%s: truncated header\n", path); return -1; }
    const size_t start = ((size_t)(r.p - base) + align - 1) / align * align;
    for (uint64_t i = 0; i < nt; i++) {
        ts[i].data = base + start + offs[i];
        ts[i].bytes = ts[i].rows ? ck_row_bytes(ts[i].type, ts[i].cols) * (size_t)ts[i].rows : 0;
        if (ts[i].data + ts[i].bytes > base + st.st_size) { fprintf(stderr, "%s: %s out of range\n", path, ts[i].name); return -1; }
    }
    free(offs);
    *out = ts;
    *count = (int)nt;
    return 0;
}

typedef struct { const tensor *t; const float *x; const uint8_t *xq; int64_t n; float *y; int64_t chunk_rows; int q8; } job;

static void run_chunk(void *ctx, int64_t c) {
    const job *j = ctx;
    const int64_t r0 = c * j->chunk_rows, r1 = r0 + j->chunk_rows < j->t->rows ? r0 + j->chunk_rows : j->t->rows;
    if (j->q8) ck_matmul_q8(j->t->type, j->t->data, j->t->cols, r0, r1, j->xq, j->n, j->y, j->t->rows);
    else ck_matmul(j->t->type, j->t->data, j->t->cols, r0, r1, j->x, j->t->cols, j->n, j->y, j->t->rows);
}

static void product(ck_pool *pool, int threads, const tensor *t, const float *x, uint8_t *xq, int64_t n, float *y, int q8) {
    if (q8) ck_quantize_activations_q8_rows_for(x, t->cols, n, t->cols, xq, n);
    const int64_t tile = ck_row_tile(), tiles = (t->rows + tile - 1) / tile;
    const int64_t macs = n * t->rows * t->cols;
    int64_t wanted = threads == 1 || macs < (1 << 17) ? 1 : threads * (n >= 8 ? 8 : 4);
    if (wanted > tiles) wanted = tiles;
    const int64_t per = (tiles + wanted - 1) / wanted, chunk_rows = per * tile;
    const int64_t chunks = (t->rows + chunk_rows - 1) / chunk_rows;
    job j = {t, x, xq, n, y, chunk_rows, q8};
    if (chunks == 1) run_chunk(&j, 0);
    else ck_pool_run(pool, chunks, run_chunk, &j);
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static const char *type_name(int t) {
    switch (t) {
    case 2: return "Q4_0"; case 3: return "Q4_1"; case 6: return "Q5_0"; case 7: return "Q5_1"; case 8: return "Q8_0";
    case 12: return "Q4_K"; case 13: return "Q5_K"; case 14: return "Q6_K"; case 20: return "IQ4_NL"; default: return "?";
    }
}

typedef struct { const uint8_t *p; size_t part; } bwjob;
static volatile uint64_t sink;
static void read_part(void *ctx, int64_t i) {
    const bwjob *bj = ctx;
    sink += ck_read_sum(bj->p + (size_t)i * bj->part, bj->part);
}

static int included(const tensor *t) { return t->rows && ck_q8_supports(t->type) && !strstr(t->name, "token_embd"); }

int main(int argc, char **argv) {
    int threads = 2, repeats = 11, isa = -1, only_int8 = 0;
    int ns[16] = {1}, nn = 1;
    int first = 1;
    while (first < argc && argv[first][0] == '-') {
        if (!strcmp(argv[first], "-t") && first + 1 < argc) threads = atoi(argv[first + 1]);
        else if (!strcmp(argv[first], "-r") && first + 1 < argc) repeats = atoi(argv[first + 1]);
        else if (!strcmp(argv[first], "--isa") && first + 1 < argc) isa = atoi(argv[first + 1]);
        else if (!strcmp(argv[first], "--int8-only")) { only_int8 = 1; first += 1; continue; }
        else if (!strcmp(argv[first], "-n") && first + 1 < argc) {
            nn = 0;
            for (char *s = argv[first + 1]; *s && nn < 16;) { ns[nn++] = (int)strtol(s, &s, 10); if (*s == ',') s++; }
        } else { fprintf(stderr, "usage: %s [-t THREADS] [-r REPEATS] [-n N,...] [--isa N] [--int8-only] FILE.gguf...\n", argv[0]); return 2; }
        first += 2;
    }
    if (first >= argc) { fprintf(stderr, "usage: %s [-t THREADS] [-r REPEATS] [-n N,...] [--isa N] FILE.gguf...\n", argv[0]); return 2; }
    ck_set_isa(isa);
    ck_pool *pool = ck_pool_create(threads);

    const size_t bwbytes = (size_t)1 << 30;
    uint8_t *buf = aligned_alloc(64, bwbytes);
    memset(buf, 1, bwbytes);
    double bw = 0;
    {
        bwjob bj = {buf, bwbytes / (size_t)threads};
        for (int rep = 0; rep < 5; rep++) {
            const double t0 = now();
            ck_pool_run(pool, threads, read_part, &bj);
            const double dt = now() - t0;
            if (bwbytes / dt > bw) bw = bwbytes / dt;
        }
    }
    free(buf);
    printf("fp32: ck_matmul isa %s; int8: ck_matmul_q8 isa %s; %d thread(s); read bandwidth %.1f GB/s (1 GiB, best of 5)\n",
           ck_isa_name(), ck_q8_isa_name(), threads, bw / 1e9);

    for (int f = first; f < argc; f++) {
        tensor *ts;
        int nt;
        if (load_gguf(argv[f], &ts, &nt)) return 1;
        const char *base = strrchr(argv[f], '/') ? strrchr(argv[f], '/') + 1 : argv[f];
        int types[32], ntypes = 0;
        for (int i = 0; i < nt; i++) {
            if (!included(&ts[i])) continue;
            int seen = 0;
            for (int k = 0; k < ntypes; k++) seen |= types[k] == ts[i].type;
            if (!seen && ntypes < 32) types[ntypes++] = ts[i].type;
        }
        for (int ni = 0; ni < nn; ni++) {
            const int n = ns[ni] < 1 ? 1 : ns[ni];
            for (int k = 0; k < ntypes; k++) {
                const int type = types[k];
                size_t bytes = 0, maxk = 0, maxr = 0;
                int count = 0;
                for (int i = 0; i < nt; i++)
                    if (included(&ts[i]) && ts[i].type == type) {
                        bytes += ts[i].bytes;
                        count++;
                        if ((size_t)ts[i].cols > maxk) maxk = (size_t)ts[i].cols;
                        if ((size_t)ts[i].rows > maxr) maxr = (size_t)ts[i].rows;
                    }
                float *x = malloc(maxk * n * sizeof(float)), *y = malloc(maxr * n * sizeof(float));
                uint8_t *xq = aligned_alloc(64, ck_q8_row_bytes((int64_t)maxk) * n);
                for (size_t i = 0; i < maxk * n; i++) x[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
                double *times[2] = {malloc(sizeof(double) * repeats), malloc(sizeof(double) * repeats)};
                for (int rep = -1; rep < repeats; rep++)
                    for (int q8 = only_int8; q8 < 2; q8++) {
                        const double t0 = now();
                        for (int i = 0; i < nt; i++)
                            if (included(&ts[i]) && ts[i].type == type) product(pool, threads, &ts[i], x, xq, n, y, q8);
                        if (rep >= 0) times[q8][rep] = now() - t0;
                    }
                for (int q8 = only_int8; q8 < 2; q8++) {
                    qsort(times[q8], (size_t)repeats, sizeof(double), cmp_double);
                    const double best = times[q8][0], med = times[q8][repeats / 2];
                    printf("%-34s %-6s n=%-3d %-4s %3d tensors %7.1f MB  best %7.3f ms  median %7.3f ms  %5.1f GB/s = %3.0f%% of the floor",
                           base, type_name(type), n, q8 ? "int8" : "fp32", count, bytes / 1e6, best * 1e3, med * 1e3,
                           bytes / best / 1e9, 100.0 * bytes / best / bw);
                    if (n > 1) printf("  %7.0f tok/s", n / best);
                    printf("\n");
                }
                if (!only_int8) printf("%-34s %-6s n=%-3d int8/fp32 speed (best) %.2fx\n", base, type_name(type), n, times[0][0] / times[1][0]);
                free(x); free(y); free(xq); free(times[0]); free(times[1]);
            }
        }
    }
    ck_pool_destroy(pool);
    return 0;
}
