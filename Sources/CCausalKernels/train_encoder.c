// Training kernels for encoder-only models (ck_train_encoder.h).
#include "ck_train_encoder.h"
#include <math.h>
#include <stdlib.h>

void ck_train_layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                                int64_t rows, int64_t n, float eps) {
    if (n <= 0) return;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += (double)xr[i];
        const double mu = sum / (double)n;
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const double d = (double)xr[i] - mu;
            ss += d * d;
        }
        const double inv = 1.0 / sqrt(ss / (double)n + (double)eps);
        mean[r] = (float)mu;
        rstd[r] = (float)inv;
        for (int64_t i = 0; i < n; i++) yr[i] = (float)(((double)xr[i] - mu) * inv) * w[i] + b[i];
    }
}

void ck_train_layernorm_backward(const float *dy, const float *x, const float *w, const float *mean,
                                 const float *rstd, float *dx, float *dw, float *db, int64_t rows, int64_t n,
                                 int accumulate) {
    if (n <= 0 || rows <= 0) return;
    // dw and db summed over the rows in double (rows in order), then added once.
    double *acc = (double *)calloc((size_t)(2 * n), sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        const float *dyr = dy + r * n, *xr = x + r * n;
        float *dxr = dx + r * n;
        const float mu = mean[r], rs = rstd[r];
        double sg = 0.0, sgx = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float xhat = (xr[i] - mu) * rs;
            const float g = dyr[i] * w[i];
            sg += (double)g;
            sgx += (double)g * (double)xhat;
            if (acc) {
                acc[i] += (double)dyr[i] * (double)xhat;
                acc[n + i] += (double)dyr[i];
            } else {
                dw[i] += dyr[i] * xhat;
                db[i] += dyr[i];
            }
        }
        const float mg = (float)(sg / (double)n), mgx = (float)(sgx / (double)n);
        for (int64_t i = 0; i < n; i++) {
            const float xhat = (xr[i] - mu) * rs;
            const float v = rs * (dyr[i] * w[i] - mg - xhat * mgx);
            dxr[i] = accumulate ? dxr[i] + v : v;
        }
    }
    if (acc) {
        for (int64_t i = 0; i < n; i++) {
            dw[i] += (float)acc[i];
            db[i] += (float)acc[n + i];
        }
        free(acc);
    }
}

void ck_train_bias_backward(const float *dy, float *db, int64_t rows, int64_t n) {
    if (n <= 0 || rows <= 0) return;
    double *acc = (double *)calloc((size_t)n, sizeof(double));
    if (!acc) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < n; j++) db[j] += dy[r * n + j];
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) acc[j] += (double)dy[r * n + j];
    for (int64_t j = 0; j < n; j++) db[j] += (float)acc[j];
    free(acc);
}
