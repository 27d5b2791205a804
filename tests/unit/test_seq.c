/* The sequence ops of the CPU backend (embedding, positional embedding,
 * multi-head self-attention, dense and layernorm per position): PyTorch's
 * results on the committed reference vectors (tests/reference/seq.bin),
 * finite-difference gradients, and the determinism the bit-identical
 * property needs (a split on a block boundary and the lane count change no
 * bit).  A small transformer block then trains through the model, its loss
 * falling, and a bad token id is refused naming its sample.
 *
 * The CPU backend's buffers are host memory: after td_backend_sync the tests
 * read and perturb them in place. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "dataset.h"
#include "error.h"
#include "layers.h"
#include "lossscale.h"
#include "model.h"
#include "refbin.h"
#include "util.h"

static uint64_t rng_state = 20261207;

static float frand(void) { /* [-1, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rng_state >> 40) / 8388608.0 - 1.0);
}

/* The device buffers of one test, freed together. */
typedef struct bufs {
  td_backend *be;
  td_buf b[48];
  int n;
} bufs;

static void bufs_open(bufs *p) {
  char err[256];

  memset(p, 0, sizeof(*p));
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &p->be, err, sizeof(err)), 0);
}

/* n floats (at least one), a copy of src or zeroed. */
static float *dalloc(bufs *p, const float *src, size_t n) {
  td_buf *b;

  ck_assert_int_lt(p->n, (int)TD_ARRAY_SIZE(p->b));
  b = &p->b[p->n++];
  ck_assert_int_eq(td_backend_alloc(p->be, (n > 0 ? n : 1) * sizeof(float), b), 0);
  if (src != NULL)
    td_backend_upload(p->be, b->ptr, src, n * sizeof(float));
  return b->ptr;
}

static float *drand(bufs *p, size_t n, float scale) {
  float *x = dalloc(p, NULL, n);

  for (size_t i = 0; i < n; i++)
    x[i] = frand() * scale;
  return x;
}

static void bufs_close(bufs *p) {
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  for (int i = 0; i < p->n; i++)
    td_backend_free(p->be, &p->b[i]);
  td_backend_destroy(p->be);
}

/* ---- PyTorch's results (tests/reference/seq.bin) ---- */

static float *ref_dev(bufs *p, const ref_file *f, const char *c, const char *name) {
  const ref_tensor *t = ref_get(f, c, name);

  return dalloc(p, t->data, t->n);
}

/* |got - want| <= 1e-4 (|want| + rms(want)), as tests/reference/README.md says */
static void ref_expect(const ref_file *f, const char *c, const char *name, const float *got) {
  const ref_tensor *t = ref_get(f, c, name);
  double s = 0.0, scale;

  for (size_t i = 0; i < t->n; i++)
    s += (double)t->data[i] * t->data[i];
  scale = sqrt(s / (double)t->n) + 1e-30;
  for (size_t i = 0; i < t->n; i++)
    ck_assert_msg(fabs(got[i] - t->data[i]) <= 1e-4 * (fabs(t->data[i]) + scale),
                  "%s%s[%zu]: got %.8g, PyTorch %.8g", c, name, i, (double)got[i],
                  (double)t->data[i]);
}

static float ref_param(const ref_file *f, const char *c, size_t i) {
  const ref_tensor *t = ref_get(f, c, "params");

  ck_assert_uint_gt(t->n, i);
  return t->data[i];
}

START_TEST(test_embedding_reference) {
  const char *c = "embedding/0/";
  ref_file f;
  bufs p;

  ref_open(&f, "seq.bin");
  bufs_open(&p);
  {
    const ref_tensor *ids = ref_get(&f, c, "ids");
    size_t vocab = (size_t)ref_param(&f, c, 0), dim = (size_t)ref_param(&f, c, 1);
    float *x = ref_dev(&p, &f, c, "ids"), *w = ref_dev(&p, &f, c, "w");
    float *dy = ref_dev(&p, &f, c, "dy"), *y = dalloc(&p, NULL, ids->n * dim);
    float *dw = dalloc(&p, NULL, vocab * dim);

    td_backend_fill(p.be, dw, vocab * dim, 7.0f); /* beta 0 overwrites */
    td_backend_embedding_fwd(p.be, x, w, y, ids->n, vocab, dim);
    td_backend_embedding_bwd(p.be, x, dy, dw, ids->n, vocab, dim, 0.0f);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    ref_expect(&f, c, "y", y);
    ref_expect(&f, c, "dw", dw);
  }
  bufs_close(&p);
  ref_close(&f);
}
END_TEST

START_TEST(test_pos_embedding_reference) {
  const char *c = "pos_embedding/0/";
  ref_file f;
  bufs p;

  ref_open(&f, "seq.bin");
  bufs_open(&p);
  {
    const ref_tensor *x = ref_get(&f, c, "x"), *w = ref_get(&f, c, "w");
    size_t n = x->dims[0], cols = w->n;
    float *xd = ref_dev(&p, &f, c, "x"), *wd = ref_dev(&p, &f, c, "w");
    float *dy = ref_dev(&p, &f, c, "dy"), *y = dalloc(&p, NULL, x->n);
    float *dw = dalloc(&p, NULL, cols);

    td_backend_add_rows(p.be, xd, wd, y, n, cols);
    td_backend_bias_grad(p.be, dy, n, cols, 0.0f, dw);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    ref_expect(&f, c, "y", y);
    ref_expect(&f, c, "dx", dy); /* the gradient passes through */
    ref_expect(&f, c, "dw", dw);
    /* in place */
    td_backend_add_rows(p.be, xd, wd, xd, n, cols);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    ref_expect(&f, c, "y", xd);
  }
  bufs_close(&p);
  ref_close(&f);
}
END_TEST

/* Attention's buffers for a desc: saved (qkv, p, o) and scratch. */
typedef struct attn_bufs {
  float *qkv, *p, *o, *dqkv, *dout, *dp;
} attn_bufs;

static attn_bufs attn_alloc(bufs *p, const td_attention_desc *a) {
  size_t rows = (size_t)a->n * a->t;

  return (attn_bufs){.qkv = dalloc(p, NULL, rows * 3 * a->d),
                     .p = dalloc(p, NULL, (size_t)a->n * a->heads * a->t * a->t),
                     .o = dalloc(p, NULL, rows * a->d),
                     .dqkv = dalloc(p, NULL, rows * 3 * a->d),
                     .dout = dalloc(p, NULL, rows * a->d),
                     .dp = dalloc(p, NULL, (size_t)a->n * a->t * a->t)};
}

START_TEST(test_attention_reference) {
  char names[8][32], c[64];
  ref_file f;
  size_t ncases;

  ref_open(&f, "seq.bin");
  ncases = ref_cases(&f, "attention/", names, 8);
  ck_assert_uint_ge(ncases, 4);
  for (size_t k = 0; k < ncases; k++) {
    bufs p;

    snprintf(c, sizeof(c), "attention/%s/", names[k]);
    bufs_open(&p);
    {
      const ref_tensor *x = ref_get(&f, c, "x");
      td_attention_desc a = {.n = (int)x->dims[0], .t = (int)x->dims[1], .d = (int)x->dims[2],
                             .heads = (int)ref_param(&f, c, 0),
                             .causal = ref_param(&f, c, 1) != 0.0f};
      size_t d = (size_t)a.d, in_w = 3 * d * d;
      float *xd = ref_dev(&p, &f, c, "x"), *dy = ref_dev(&p, &f, c, "dy");
      float *w = dalloc(&p, NULL, 4 * d * d), *b = dalloc(&p, NULL, 4 * d);
      float *dw = dalloc(&p, NULL, 4 * d * d), *db = dalloc(&p, NULL, 4 * d);
      float *y = dalloc(&p, NULL, x->n), *dx = dalloc(&p, NULL, x->n);
      attn_bufs s = attn_alloc(&p, &a);

      memcpy(w, ref_get(&f, c, "in_w")->data, in_w * sizeof(float));
      memcpy(w + in_w, ref_get(&f, c, "out_w")->data, d * d * sizeof(float));
      memcpy(b, ref_get(&f, c, "in_b")->data, 3 * d * sizeof(float));
      memcpy(b + 3 * d, ref_get(&f, c, "out_b")->data, d * sizeof(float));
      td_backend_attention_fwd(p.be, &a, xd, w, b, s.qkv, s.p, s.o, y);
      td_backend_attention_bwd(p.be, &a, xd, w, s.qkv, s.p, s.o, dy, dx, dw, db, 0.0f, s.dqkv,
                               s.dout, s.dp);
      ck_assert_int_eq(td_backend_sync(p.be), 0);
      ref_expect(&f, c, "y", y);
      ref_expect(&f, c, "dx", dx);
      ref_expect(&f, c, "d_in_w", dw);
      ref_expect(&f, c, "d_out_w", dw + in_w);
      ref_expect(&f, c, "d_in_b", db);
      ref_expect(&f, c, "d_out_b", db + 3 * d);
      /* a causal query gives no weight to later positions */
      for (int h = 0; a.causal && h < a.heads; h++)
        for (int i = 0; i < a.t; i++)
          for (int j = i + 1; j < a.t; j++)
            ck_assert(s.p[((size_t)h * a.t + i) * a.t + j] == 0.0f);
    }
    bufs_close(&p);
  }
  ref_close(&f);
}
END_TEST

/* nn.Linear and nn.LayerNorm(D) on [N, T, D] are the ops on N*T rows. */
START_TEST(test_per_position_reference) {
  ref_file f;
  bufs p;

  ref_open(&f, "seq.bin");
  bufs_open(&p);
  {
    const char *c = "dense_seq/0/";
    const ref_tensor *x = ref_get(&f, c, "x"), *w = ref_get(&f, c, "w");
    int rows = (int)(x->dims[0] * x->dims[1]), in = (int)w->dims[1], out = (int)w->dims[0];
    float *xd = ref_dev(&p, &f, c, "x"), *wd = ref_dev(&p, &f, c, "w");
    float *bd = ref_dev(&p, &f, c, "b"), *dy = ref_dev(&p, &f, c, "dy");
    float *y = dalloc(&p, NULL, (size_t)rows * out), *dx = dalloc(&p, NULL, x->n);
    float *dw = dalloc(&p, NULL, w->n), *db = dalloc(&p, NULL, (size_t)out);

    td_backend_dense_fwd(p.be, xd, wd, bd, y, rows, in, out);
    td_backend_dense_bwd(p.be, xd, wd, dy, dx, dw, db, rows, in, out, 0.0f);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    ref_expect(&f, c, "y", y);
    ref_expect(&f, c, "dx", dx);
    ref_expect(&f, c, "dw", dw);
    ref_expect(&f, c, "db", db);
  }
  {
    const char *c = "layernorm_seq/0/";
    const ref_tensor *x = ref_get(&f, c, "x"), *g = ref_get(&f, c, "gamma");
    size_t cols = g->n, rows = x->n / cols;
    float *xd = ref_dev(&p, &f, c, "x"), *gd = ref_dev(&p, &f, c, "gamma");
    float *bd = ref_dev(&p, &f, c, "beta"), *dy = ref_dev(&p, &f, c, "dy");
    float *y = dalloc(&p, NULL, x->n), *dx = dalloc(&p, NULL, x->n);
    float *st = dalloc(&p, NULL, 2 * rows), *dg = dalloc(&p, NULL, cols);
    float *dbeta = dalloc(&p, NULL, cols);

    td_backend_layernorm_fwd(p.be, xd, y, rows, cols, gd, bd, ref_param(&f, c, 0), st,
                             st + rows);
    td_backend_layernorm_bwd(p.be, xd, dy, dx, rows, cols, gd, st, st + rows, 0.0f, dg, dbeta);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    ref_expect(&f, c, "y", y);
    ref_expect(&f, c, "dx", dx);
    ref_expect(&f, c, "dgamma", dg);
    ref_expect(&f, c, "dbeta", dbeta);
  }
  bufs_close(&p);
  ref_close(&f);
}
END_TEST

/* ---- finite differences ---- */

/* One op under test: up to three differentiable inputs, one output; L =
 * sum(out * dout), so the backward op from dout gives dL/d(input). */
typedef struct fd_ctx {
  bufs *p;
  int nin;
  float *in[3], *gin[3];
  size_t in_n[3];
  float *out, *dout, *ids;
  size_t out_n;
  td_attention_desc a;
  attn_bufs s;
} fd_ctx;

static float *fd_input(fd_ctx *c, size_t n, float scale) {
  int i = c->nin++;

  c->in_n[i] = n;
  c->in[i] = drand(c->p, n, scale);
  c->gin[i] = dalloc(c->p, NULL, n);
  return c->in[i];
}

static void fd_output(fd_ctx *c, size_t n) {
  c->out_n = n;
  c->out = dalloc(c->p, NULL, n);
  c->dout = drand(c->p, n, 1);
}

enum { EMB_VOCAB = 5, EMB_DIM = 3, EMB_ROWS = 8 };

static void emb_setup(fd_ctx *c) {
  static const float ids[EMB_ROWS] = {0, 3, 3, 1, 4, 0, 3, 2};

  c->ids = dalloc(c->p, ids, EMB_ROWS);
  fd_input(c, EMB_VOCAB * EMB_DIM, 1);
  fd_output(c, EMB_ROWS * EMB_DIM);
}
static void emb_fwd(fd_ctx *c) {
  td_backend_embedding_fwd(c->p->be, c->ids, c->in[0], c->out, EMB_ROWS, EMB_VOCAB, EMB_DIM);
}
static void emb_bwd(fd_ctx *c) {
  td_backend_embedding_bwd(c->p->be, c->ids, c->dout, c->gin[0], EMB_ROWS, EMB_VOCAB, EMB_DIM,
                           0.0f);
}

static void pos_setup(fd_ctx *c) {
  fd_input(c, 3 * 12, 1);
  fd_input(c, 12, 1);
  fd_output(c, 3 * 12);
}
static void pos_fwd(fd_ctx *c) { td_backend_add_rows(c->p->be, c->in[0], c->in[1], c->out, 3, 12); }
static void pos_bwd(fd_ctx *c) {
  memcpy(c->gin[0], c->dout, c->out_n * sizeof(float));
  td_backend_bias_grad(c->p->be, c->dout, 3, 12, 0.0f, c->gin[1]);
}

static void attn_setup_as(fd_ctx *c, bool causal) {
  c->a = (td_attention_desc){.n = 2, .t = 5, .d = 4, .heads = 2, .causal = causal};
  fd_input(c, 2 * 5 * 4, 1);
  fd_input(c, 4 * 4 * 4, 0.6f);
  fd_input(c, 4 * 4, 0.3f);
  fd_output(c, 2 * 5 * 4);
  c->s = attn_alloc(c->p, &c->a);
}
static void attn_setup(fd_ctx *c) { attn_setup_as(c, false); }
static void attn_causal_setup(fd_ctx *c) { attn_setup_as(c, true); }
static void attn_fwd(fd_ctx *c) {
  td_backend_attention_fwd(c->p->be, &c->a, c->in[0], c->in[1], c->in[2], c->s.qkv, c->s.p,
                           c->s.o, c->out);
}
static void attn_bwd(fd_ctx *c) {
  td_backend_attention_bwd(c->p->be, &c->a, c->in[0], c->in[1], c->s.qkv, c->s.p, c->s.o,
                           c->dout, c->gin[0], c->gin[1], c->gin[2], 0.0f, c->s.dqkv,
                           c->s.dout, c->s.dp);
}

typedef struct fd_case {
  const char *name;
  void (*setup)(fd_ctx *c);
  void (*fwd)(fd_ctx *c);
  void (*bwd)(fd_ctx *c);
} fd_case;

static const fd_case fd_cases[] = {
    {"embedding", emb_setup, emb_fwd, emb_bwd},
    {"pos_embedding", pos_setup, pos_fwd, pos_bwd},
    {"attention", attn_setup, attn_fwd, attn_bwd},
    {"attention, causal", attn_causal_setup, attn_fwd, attn_bwd},
};

static double fd_loss(fd_ctx *c, const fd_case *k) {
  double s = 0.0;

  k->fwd(c);
  ck_assert_int_eq(td_backend_sync(c->p->be), 0);
  for (size_t i = 0; i < c->out_n; i++)
    s += (double)c->out[i] * c->dout[i];
  return s;
}

START_TEST(test_finite_differences) {
  const fd_case *k = &fd_cases[_i];
  const float h = 1e-2f;
  fd_ctx c;
  bufs p;

  memset(&c, 0, sizeof(c));
  bufs_open(&p);
  c.p = &p;
  k->setup(&c);
  k->fwd(&c);
  k->bwd(&c);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  for (int t = 0; t < c.nin; t++) {
    double gscale = 0.0;
    int live = 0;

    for (size_t e = 0; e < c.in_n[t]; e++)
      gscale = fmax(gscale, fabs(c.gin[t][e]));
    for (size_t e = 0; e < c.in_n[t]; e++) {
      float keep = c.in[t][e], up = keep + h, down = keep - h;
      double lu, ld, fd, g = c.gin[t][e];

      c.in[t][e] = up;
      lu = fd_loss(&c, k);
      c.in[t][e] = down;
      ld = fd_loss(&c, k);
      c.in[t][e] = keep;
      fd = (lu - ld) / ((double)up - down);
      ck_assert_msg(fabs(fd - g) <= 1e-2 * fabs(fd) + 2e-3 * (1.0 + gscale),
                    "%s: input %d element %zu: backward %.6g, finite difference %.6g", k->name,
                    t, e, g, fd);
      live += fabs(g) > 1e-3;
    }
    /* the check saw real gradients (the embedding's unused id has none) */
    ck_assert_msg(live >= (int)c.in_n[t] / 2, "%s: input %d: only %d live gradients", k->name,
                  t, live);
  }
  bufs_close(&p);
}
END_TEST

/* ---- determinism ---- */

enum { DT_N = 3, DT_T = 8, DT_D = 8, DT_H = 2 };

typedef struct attn_run {
  float y[DT_N * DT_T * DT_D], dx[DT_N * DT_T * DT_D];
  float dw[4 * DT_D * DT_D], db[4 * DT_D];
} attn_run;

/* Attention on DT_N sequences, run as the calls cut at sample `cut` (the
 * first call beta 0, the second 1), on a backend with `lanes` lanes. */
static void attn_runs(const char *lanes, int cut, attn_run *out) {
  td_attention_desc all = {.n = DT_N, .t = DT_T, .d = DT_D, .heads = DT_H, .causal = true};
  size_t row = (size_t)DT_T * DT_D;
  float *x, *w, *b, *dy, *y, *dx, *dw, *db;
  attn_bufs s;
  bufs p;

  setenv("TRAIND_CPU_LANES", lanes, 1);
  rng_state = 99;
  bufs_open(&p);
  x = drand(&p, DT_N * row, 1);
  w = drand(&p, 4 * DT_D * DT_D, 0.5f);
  b = drand(&p, 4 * DT_D, 0.2f);
  dy = drand(&p, DT_N * row, 1);
  y = dalloc(&p, NULL, DT_N * row);
  dx = dalloc(&p, NULL, DT_N * row);
  dw = dalloc(&p, NULL, 4 * DT_D * DT_D);
  db = dalloc(&p, NULL, 4 * DT_D);
  s = attn_alloc(&p, &all);
  for (int part = 0; part < 2; part++) {
    int lo = part == 0 ? 0 : cut, hi = part == 0 ? cut : DT_N;
    td_attention_desc a = all;
    size_t r = (size_t)lo * DT_T;

    if (hi == lo)
      continue;
    a.n = hi - lo;
    td_backend_attention_fwd(p.be, &a, x + r * DT_D, w, b, s.qkv + r * 3 * DT_D,
                             s.p + (size_t)lo * DT_H * DT_T * DT_T, s.o + r * DT_D,
                             y + r * DT_D);
    td_backend_attention_bwd(p.be, &a, x + r * DT_D, w, s.qkv + r * 3 * DT_D,
                             s.p + (size_t)lo * DT_H * DT_T * DT_T, s.o + r * DT_D,
                             dy + r * DT_D, dx + r * DT_D, dw, db, lo == 0 ? 0.0f : 1.0f,
                             s.dqkv + r * 3 * DT_D, s.dout + r * DT_D,
                             s.dp + (size_t)lo * DT_T * DT_T);
  }
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  memcpy(out->y, y, sizeof(out->y));
  memcpy(out->dx, dx, sizeof(out->dx));
  memcpy(out->dw, dw, sizeof(out->dw));
  memcpy(out->db, db, sizeof(out->db));
  bufs_close(&p);
  unsetenv("TRAIND_CPU_LANES");
}

/* Two sequences of 8 positions are a block of 16 rows: cut there, the
 * calls give the whole batch's bits, on any number of lanes. */
START_TEST(test_attention_split_and_lanes) {
  static const char *const lanes[] = {"1", "2", "3"};
  attn_run *ref = malloc(sizeof(*ref)), *got = malloc(sizeof(*got));

  attn_runs("1", DT_N, ref);
  for (size_t l = 0; l < TD_ARRAY_SIZE(lanes); l++) {
    for (int cut = 0; cut <= DT_N; cut += 2) {
      attn_runs(lanes[l], cut, got);
      ck_assert_msg(memcmp(got, ref, sizeof(*got)) == 0, "lanes %s, cut at %d: other bits",
                    lanes[l], cut);
    }
  }
  free(ref);
  free(got);
}
END_TEST

/* The scatter is a chain over the rows: any cut gives the same bits. */
START_TEST(test_embedding_split) {
  enum { ROWS = 40, VOCAB = 6, DIM = 5 };
  float ids[ROWS];
  float *dw, *whole;
  bufs p;

  for (int r = 0; r < ROWS; r++)
    ids[r] = (float)((r * 7 + r / 3) % VOCAB);
  bufs_open(&p);
  {
    float *di = dalloc(&p, ids, ROWS), *dy = drand(&p, (size_t)ROWS * DIM, 1);

    whole = dalloc(&p, NULL, VOCAB * DIM);
    dw = dalloc(&p, NULL, VOCAB * DIM);
    td_backend_embedding_bwd(p.be, di, dy, whole, ROWS, VOCAB, DIM, 0.0f);
    for (int cut = 1; cut < ROWS; cut += 7) {
      td_backend_embedding_bwd(p.be, di, dy, dw, (size_t)cut, VOCAB, DIM, 0.0f);
      td_backend_embedding_bwd(p.be, di + cut, dy + (size_t)cut * DIM, dw, (size_t)(ROWS - cut),
                               VOCAB, DIM, 1.0f);
      ck_assert_int_eq(td_backend_sync(p.be), 0);
      ck_assert_msg(memcmp(dw, whole, VOCAB * DIM * sizeof(float)) == 0, "cut at %d", cut);
    }
  }
  bufs_close(&p);
}
END_TEST

/* Bad sizes latch TD_EINVAL; the op runs nothing. */
START_TEST(test_attention_bad_desc) {
  td_attention_desc a = {.n = 1, .t = 4, .d = 6, .heads = 4};
  float buf[256] = {0};
  bufs p;

  bufs_open(&p);
  td_backend_attention_fwd(p.be, &a, buf, buf, buf, buf, buf, buf, buf);
  ck_assert_int_eq(td_backend_sync(p.be), TD_EINVAL);
  ck_assert_msg(strstr(td_backend_error(p.be), "attention_fwd") != NULL, "%s",
                td_backend_error(p.be));
  bufs_close(&p);
}
END_TEST

/* ---- through the model ---- */

enum { TB_T = 8, TB_VOCAB = 6, TB_BATCH = 32 };

/* embedding -> pos_embedding -> layernorm -> attention (causal) -> dense ->
 * gelu -> dense -> flatten -> dense: a transformer block (residuals aside). */
static void block_spec(td_jobspec *s) {
  static const td_layer layers[] = {
      {.type = TD_LAYER_EMBEDDING, .vocab = TB_VOCAB, .dim = 8},
      {.type = TD_LAYER_POS_EMBEDDING},
      {.type = TD_LAYER_LAYERNORM},
      {.type = TD_LAYER_ATTENTION, .heads = 2, .causal = 1},
      {.type = TD_LAYER_DENSE, .units = 16},
      {.type = TD_LAYER_GELU},
      {.type = TD_LAYER_DENSE, .units = 8},
      {.type = TD_LAYER_FLATTEN},
      {.type = TD_LAYER_DENSE, .units = 3},
  };

  memset(s, 0, sizeof(*s));
  snprintf(s->name, sizeof(s->name), "block");
  s->input_rank = 1;
  s->input_dims[0] = TB_T;
  memcpy(s->layers, layers, sizeof(layers));
  s->nlayers = (int)TD_ARRAY_SIZE(layers);
  s->sample_dtype = TD_DTYPE_U8;
  s->norm_std = 1.0f;
  s->batch_size = TB_BATCH;
  s->epochs = 1;
  s->seed = 11;
  s->opt = (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f,
                          .eps = 1e-8f};
  s->schedule = (td_schedule){.kind = TD_SCHED_CONSTANT};
  s->loss_scale = td_lossscale_defaults();
  s->min_micro_batch = 1;
  s->remedies[0] = TD_REMEDY_ACCUMULATE;
  s->nremedies = 1;
}

/* The class of a sequence is how many of its tokens are 0, capped at 2: a
 * count over positions, which attention can see. */
static void block_batch(unsigned *seed, uint8_t *ids, int32_t *labels) {
  for (int i = 0; i < TB_BATCH; i++) {
    int zeros = 0;

    for (int t = 0; t < TB_T; t++) {
      ids[i * TB_T + t] = (uint8_t)(rand_r(seed) % TB_VOCAB);
      zeros += ids[i * TB_T + t] == 0;
    }
    labels[i] = zeros < 2 ? zeros : 2;
  }
}

START_TEST(test_block_trains) {
  uint8_t ids[TB_BATCH * TB_T];
  int32_t labels[TB_BATCH];
  double first = 0.0, last = 0.0;
  unsigned seed = 3;
  td_jobspec s;
  td_plan plan;
  td_backend *be;
  td_model *m;
  td_mem_stats mem;
  char err[256];

  block_spec(&s);
  ck_assert_int_eq(td_plan_compute(&s, 16, TD_PREC_FP32, 0, &plan), 0);
  ck_assert(plan.bit_identical);
  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, err, sizeof(err)), 0);
  ck_assert_msg(td_model_create(be, &s, 16, &m, err, sizeof(err)) == 0, "%s", err);
  for (int step = 0; step < 300; step++) {
    td_step_stats st;

    block_batch(&seed, ids, labels);
    ck_assert_msg(td_model_train_step(m, ids, labels, TB_BATCH, &st) == 0, "%s",
                  td_model_error(m));
    if (step < 20)
      first += st.loss_sum;
    if (step >= 280)
      last += st.loss_sum;
  }
  ck_assert_msg(last < 0.5 * first, "the loss fell from %.4g to %.4g only", first / 20 / TB_BATCH,
                last / 20 / TB_BATCH);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.peak, plan.total); /* the plan is exact, to the byte */
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* An id beyond the vocabulary is TD_EDATA naming its sample, before
 * anything runs. */
START_TEST(test_block_bad_id) {
  uint8_t ids[TB_BATCH * TB_T];
  int32_t labels[TB_BATCH];
  unsigned seed = 5;
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  char err[256];

  block_spec(&s);
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, TB_BATCH, &m, err, sizeof(err)), 0);
  block_batch(&seed, ids, labels);
  ids[5 * TB_T + 3] = TB_VOCAB;
  ck_assert_int_eq(td_model_train_step(m, ids, labels, TB_BATCH, &st), TD_EDATA);
  ck_assert_msg(strstr(td_model_error(m), "sample 5 of the batch: token id 6 at position 3") !=
                    NULL,
                "%s", td_model_error(m));
  ck_assert_int_eq(td_model_steps(m), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* The loader's check of the ids it decodes, in each stored type: the
 * file, the sample's index and the position. */
START_TEST(test_ids_check) {
  const uint8_t u8[6] = {0, 1, 2, 3, 4, 5};
  const int32_t i32[6] = {0, 1, 2, 3, -1, 5};
  const float f32[6] = {0, 1, 2, 3, 4, 4.5f};
  char err[256];

  ck_assert_int_eq(td_ids_check(u8, TD_DTYPE_U8, 3, 2, 10, 6, "a.bin", err, sizeof(err)), 0);
  ck_assert_int_eq(td_ids_check(u8, TD_DTYPE_U8, 3, 2, 10, 5, "a.bin", err, sizeof(err)),
                   TD_EDATA);
  ck_assert_msg(strstr(err, "a.bin") != NULL &&
                    strstr(err, "sample at index 12, position 1: token id 5") != NULL,
                "%s", err);
  ck_assert_int_eq(td_ids_check((const uint8_t *)i32, TD_DTYPE_I32, 3, 2, 0, 6, "b.npy", err,
                                sizeof(err)),
                   TD_EDATA);
  ck_assert_msg(strstr(err, "sample at index 2, position 0: token id -1") != NULL, "%s", err);
  ck_assert_int_eq(td_ids_check((const uint8_t *)f32, TD_DTYPE_F32, 3, 2, 0, 6, "c.npy", err,
                                sizeof(err)),
                   TD_EDATA);
  ck_assert_msg(strstr(err, "token id 4.5") != NULL, "%s", err);
}
END_TEST

/* The job file: the keys, where an embedding may go, what the last layer
 * may give, and that ids are not normalised. */
START_TEST(test_job_file) {
  static const char *const head = "data:\n  train: {images: a, labels: b}\n"
                                  "  test: {images: c, labels: d}\n"
                                  "train: {batch_size: 8, epochs: 1, optimizer: adam}\n";
  static const struct {
    const char *model, *want;
  } cases[] = {
      {"model:\n  input: [8]\n  layers:\n    - {type: embedding, vocab: 50, dim: 8}\n"
       "    - {type: pos_embedding}\n    - {type: attention, heads: 2, causal: true}\n"
       "    - {type: layernorm}\n    - {type: dense, units: 4}\n    - {type: flatten}\n"
       "    - {type: dense, units: 3}\n",
       NULL},
      {"model:\n  input: [8]\n  layers:\n    - {type: dense, units: 8}\n"
       "    - {type: embedding, vocab: 50, dim: 8}\n    - {type: dense, units: 3}\n",
       "embedding must be the model's first layer"},
      {"model:\n  input: [8]\n  layers:\n    - {type: embedding, vocab: 50, dim: 8}\n"
       "    - {type: attention, heads: 3}\n    - {type: flatten}\n    - {type: dense, units: 3}\n",
       "attention's 3 heads must divide its 8 features"},
      {"model:\n  input: [8]\n  layers:\n    - {type: embedding, vocab: 50, dim: 8}\n"
       "    - {type: dense, units: 3}\n",
       "the last layer gives a sequence [8, 3]"},
      {"model:\n  input: [8]\n  layers:\n    - {type: dense, units: 8}\n"
       "    - {type: attention, heads: 2}\n    - {type: dense, units: 3}\n",
       "attention needs a sequence [T, D] input"},
      {"model:\n  input: [2, 4]\n  layers:\n    - {type: embedding, vocab: 50, dim: 8}\n"
       "    - {type: flatten}\n    - {type: dense, units: 3}\n",
       "model.input must be [T]"},
      {"model:\n  input: [8]\n  layers:\n    - {type: embedding, vocab: 50}\n"
       "    - {type: flatten}\n    - {type: dense, units: 3}\n",
       "embedding layer needs 'dim'"},
  };
  char text[1024], err[256];
  td_jobspec s;

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    int rc;

    snprintf(text, sizeof(text), "%s%s", cases[i].model, head);
    rc = td_jobspec_parse(text, strlen(text), NULL, &s, err, sizeof(err));
    if (cases[i].want == NULL) {
      ck_assert_msg(rc == 0, "case %zu: %s", i, err);
      ck_assert_uint_eq(s.layers[0].vocab, 50);
      ck_assert_uint_eq(s.layers[2].heads, 2);
      ck_assert_uint_eq(s.layers[2].causal, 1);
      continue;
    }
    ck_assert_int_eq(rc, TD_EJOBSPEC);
    ck_assert_msg(strstr(err, cases[i].want) != NULL, "case %zu: %s", i, err);
  }
  snprintf(text, sizeof(text), "%sdata:\n  normalize: {mean: 0.5}\n%s", cases[0].model,
           head + strlen("data:\n"));
  ck_assert_int_eq(td_jobspec_parse(text, strlen(text), NULL, &s, err, sizeof(err)),
                   TD_EJOBSPEC);
  ck_assert_msg(strstr(err, "reads token ids") != NULL, "%s", err);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("seq");
  TCase *tc = tcase_create("core");

  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_embedding_reference);
  tcase_add_test(tc, test_pos_embedding_reference);
  tcase_add_test(tc, test_attention_reference);
  tcase_add_test(tc, test_per_position_reference);
  tcase_add_loop_test(tc, test_finite_differences, 0, (int)TD_ARRAY_SIZE(fd_cases));
  tcase_add_test(tc, test_attention_split_and_lanes);
  tcase_add_test(tc, test_embedding_split);
  tcase_add_test(tc, test_attention_bad_desc);
  tcase_add_test(tc, test_block_trains);
  tcase_add_test(tc, test_block_bad_id);
  tcase_add_test(tc, test_ids_check);
  tcase_add_test(tc, test_job_file);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
