/* Checkpoints (common/checkpoint.h): a round trip, the file as plain
 * safetensors, every single-bit flip and many byte changes refused, every
 * truncation refused, another version refused, the expected tensors
 * enforced, write errors, and when one is due.  And a small fp16 trainer
 * (backend optimiser ops, schedule, loss scaler) stopped and resumed from a
 * checkpoint ends with the same bits as one that never stopped; so does the
 * worker's model (daemon/worker/model.h) through its state and progress. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "checkpoint.h"
#include "error.h"
#include "jobspec.h"
#include "lossscale.h"
#include "model.h"
#include "schedule.h"
#include "safetensors.h"
#include "util.h"

enum { W_OUT = 6, W_IN = 5, NT = 5 };

/* A small model's checkpoint: weights, a bias, Adam's two moments, a bf16
 * copy of the weights. */
typedef struct fixture {
  char dir[64], path[128];
  float w[W_OUT * W_IN], b[W_OUT], m[W_OUT * W_IN + W_OUT], v[W_OUT * W_IN + W_OUT];
  uint16_t half[W_OUT * W_IN];
  td_ckpt_tensor t[NT];
  td_ckpt_state st;
} fixture;

static void fixture_init(fixture *f) {
  memset(f, 0, sizeof(*f));
  snprintf(f->dir, sizeof(f->dir), "/tmp/td-ckpt-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(f->dir));
  snprintf(f->path, sizeof(f->path), "%s/job.ckpt", f->dir);
  for (int i = 0; i < W_OUT * W_IN; i++) {
    f->w[i] = (float)i * 0.25f - 3.0f;
    f->half[i] = (uint16_t)(0x3c00 + i);
  }
  for (int i = 0; i < W_OUT; i++)
    f->b[i] = -(float)i;
  for (int i = 0; i < W_OUT * W_IN + W_OUT; i++) {
    f->m[i] = 1e-3f * (float)i;
    f->v[i] = 1e-6f * (float)(i * i);
  }
  f->t[0] = (td_ckpt_tensor){"0.weight", "F32", 2, {W_OUT, W_IN}, f->w, sizeof(f->w)};
  f->t[1] = (td_ckpt_tensor){"0.bias", "F32", 1, {W_OUT}, f->b, sizeof(f->b)};
  f->t[2] = (td_ckpt_tensor){"optim.exp_avg", "F32", 1, {W_OUT * W_IN + W_OUT}, f->m,
                             sizeof(f->m)};
  f->t[3] = (td_ckpt_tensor){"optim.exp_avg_sq", "F32", 1, {W_OUT * W_IN + W_OUT}, f->v,
                             sizeof(f->v)};
  f->t[4] = (td_ckpt_tensor){"half.0.weight", "BF16", 2, {W_OUT, W_IN}, f->half,
                             sizeof(f->half)};
  f->st = (td_ckpt_state){.job = "fashion-mnist-mlp", .step = 12345, .epoch = 3, .batch = 77,
                          .seed = 42, .rng = 0xdeadbeefcafef00dull, .loss_scale = 32768.0f,
                          .good_steps = 1999, .skipped = 2};
}

static void fixture_free(fixture *f) {
  char tmp[160];

  snprintf(tmp, sizeof(tmp), "%s.tmp", f->path);
  unlink(tmp);
  unlink(f->path);
  rmdir(f->dir);
}

/* Destination buffers shaped like f's tensors, filled with a sentinel. */
typedef struct dest {
  unsigned char data[NT][256];
  td_ckpt_tensor t[NT];
  td_ckpt_state st;
} dest;

static void dest_init(dest *d, const fixture *f) {
  memset(d, 0xA5, sizeof(*d));
  for (int i = 0; i < NT; i++) {
    ck_assert_uint_le(f->t[i].bytes, sizeof(d->data[i]));
    d->t[i] = f->t[i];
    d->t[i].data = d->data[i];
  }
}

static bool dest_untouched(const dest *d) {
  const unsigned char *p = (const unsigned char *)&d->st;

  for (size_t i = 0; i < sizeof(d->st); i++)
    if (p[i] != 0xA5)
      return false;
  for (int i = 0; i < NT; i++)
    for (size_t j = 0; j < sizeof(d->data[i]); j++)
      if (d->data[i][j] != 0xA5)
        return false;
  return true;
}

static void expect_same(const dest *d, const fixture *f) {
  ck_assert_mem_eq(&d->st, &f->st, sizeof(f->st));
  for (int i = 0; i < NT; i++)
    ck_assert_mem_eq(d->data[i], f->t[i].data, f->t[i].bytes);
}

/* f's checkpoint written, and its bytes. */
static char *written(fixture *f, size_t *len) {
  char err[256], *buf;

  fixture_init(f);
  ck_assert_msg(td_checkpoint_write(f->path, &f->st, f->t, NT, err, sizeof(err)) == 0, "%s",
                err);
  ck_assert_int_eq(td_read_file(f->path, 1 << 20, &buf, len), 0);
  return buf;
}

START_TEST(test_round_trip) {
  char err[256], tmp[160];
  struct stat sb;
  td_st_file *sf;
  td_st_tensor got;
  fixture f;
  dest d;

  fixture_init(&f);
  ck_assert_msg(td_checkpoint_write(f.path, &f.st, f.t, NT, err, sizeof(err)) == 0, "%s", err);
  snprintf(tmp, sizeof(tmp), "%s.tmp", f.path);
  ck_assert_int_ne(stat(tmp, &sb), 0); /* renamed into place */
  dest_init(&d, &f);
  ck_assert_msg(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)) == 0, "%s", err);
  expect_same(&d, &f);

  /* a plain safetensors file: the weights load by PyTorch's names */
  ck_assert_int_eq(td_safetensors_load(f.path, 1 << 20, &sf, err, sizeof(err)), 0);
  ck_assert_int_eq(td_safetensors_find(sf, "0.weight", &got), 0);
  ck_assert_uint_eq(got.shape[0], W_OUT);
  ck_assert_mem_eq(got.data, f.w, sizeof(f.w));
  ck_assert_str_eq(td_safetensors_meta(sf, "format"), TD_CKPT_FORMAT);
  ck_assert_str_eq(td_safetensors_meta(sf, "step"), "12345");
  ck_assert_str_eq(td_safetensors_meta(sf, "loss_scale"), "32768");
  td_safetensors_free(sf);

  /* a second checkpoint replaces the first */
  f.st.step = 12400;
  f.w[3] = 99.0f;
  f.st.loss_scale = 0.1f; /* not a power of two: still exact */
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, f.t, NT, err, sizeof(err)), 0);
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), 0);
  expect_same(&d, &f);
  fixture_free(&f);
}
END_TEST

/* The callbacks' state rides along, +-inf included; a checkpoint without
 * it (as every one written before callbacks) reads as before, with none. */
START_TEST(test_callbacks_state) {
  char err[256], *buf;
  td_st_file *sf;
  size_t len;
  fixture f;
  dest d;

  buf = written(&f, &len);
  ck_assert_int_eq(td_safetensors_load(f.path, 1 << 20, &sf, err, sizeof(err)), 0);
  ck_assert_ptr_null(td_safetensors_meta(sf, "cb.es_best"));
  td_safetensors_free(sf);
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), 0);
  ck_assert(!d.st.has_callbacks);
  expect_same(&d, &f);
  free(buf);

  f.st.has_callbacks = true;
  f.st.cb = (td_cb_state){.epoch = 3, .es_best = 0.123456789012345678, .es_wait = 2, .kb_best = -INFINITY,
                          .kb_epoch = 0, .rp_best = INFINITY, .rp_wait = 7, .rp_cooldown = 1,
                          .lr_factor = 0.1f * 0.1f};
  ck_assert_msg(td_checkpoint_write(f.path, &f.st, f.t, NT, err, sizeof(err)) == 0, "%s", err);
  dest_init(&d, &f);
  ck_assert_msg(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)) == 0, "%s", err);
  ck_assert(d.st.has_callbacks);
  ck_assert_mem_eq(&d.st.cb, &f.st.cb, sizeof(f.st.cb));
  ck_assert_uint_eq(d.st.step, f.st.step);

  /* a factor out of (0, 1] is damage, not a state */
  f.st.cb.lr_factor = 2.0;
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, f.t, NT, err, sizeof(err)), 0);
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), TD_EDATA);
  ck_assert_ptr_nonnull(strstr(err, "factor"));
  ck_assert(dest_untouched(&d));
  fixture_free(&f);
}
END_TEST

/* Some of the callbacks' values without the others: damaged. */
START_TEST(test_callbacks_partial) {
  td_st_tensor w = {"0.weight", "F32", 2, {W_OUT, W_IN}, NULL, W_OUT * W_IN * 4};
  const td_st_meta meta[] = {
      {"format", TD_CKPT_FORMAT}, {"version", "1"}, {"job", "j"}, {"step", "1"},
      {"epoch", "0"}, {"batch", "1"}, {"seed", "0"}, {"rng", "0"}, {"loss_scale", "1"},
      {"good_steps", "0"}, {"skipped", "0"}, {"cb.es_best", "1"}, {"crc32", "00000000"}};
  char err[256];
  fixture f;
  dest d;

  fixture_init(&f);
  w.data = f.w;
  ck_assert_int_eq(td_safetensors_write(f.path, &w, 1, meta, TD_ARRAY_SIZE(meta)), 0);
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, 1, err, sizeof(err)), TD_EDATA);
  ck_assert_msg(strstr(err, "1 of the 9 callback values") != NULL, "%s", err);
  ck_assert(dest_untouched(&d));
  fixture_free(&f);
}
END_TEST

START_TEST(test_every_bit_flip) {
  char err[256], *buf;
  size_t len;
  fixture f;
  dest d;

  buf = written(&f, &len);
  ck_assert_uint_gt(len, 500);
  for (size_t off = 0; off < len; off++) {
    for (int bit = 0; bit < 8; bit++) {
      int rc;
      buf[off] ^= (char)(1 << bit);
      dest_init(&d, &f);
      rc = td_checkpoint_parse(buf, len, &d.st, d.t, NT, err, sizeof(err));
      if (rc != TD_EDATA && rc != TD_EVERSION)
        ck_abort_msg("bit %d of byte %zu flipped: accepted (%d)", bit, off, rc);
      if (!dest_untouched(&d))
        ck_abort_msg("bit %d of byte %zu flipped: output written", bit, off);
      if (err[0] == '\0')
        ck_abort_msg("bit %d of byte %zu flipped: no message", bit, off);
      buf[off] ^= (char)(1 << bit);
    }
  }
  /* and the restored bytes are accepted */
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_parse(buf, len, &d.st, d.t, NT, err, sizeof(err)), 0);
  expect_same(&d, &f);
  free(buf);
  fixture_free(&f);
}
END_TEST

START_TEST(test_random_byte_changes) {
  /* Any value at any place: refused, or (a space of the header's padding
   * made another space) read exactly as before. */
  uint64_t rng = 88172645463325252ull;
  char err[256], *buf;
  size_t len, refused = 0;
  fixture f;
  dest d;

  buf = written(&f, &len);
  for (int i = 0; i < 20000; i++) {
    size_t off;
    char old, val;
    int rc;

    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    off = (size_t)(rng % len);
    val = (char)(rng >> 32);
    if ((old = buf[off]) == val)
      continue;
    buf[off] = val;
    dest_init(&d, &f);
    rc = td_checkpoint_parse(buf, len, &d.st, d.t, NT, err, sizeof(err));
    if (rc == 0) {
      expect_same(&d, &f);
    } else {
      if (!dest_untouched(&d))
        ck_abort_msg("byte %zu = %02x: refused (%d) but output written", off,
                     (unsigned char)val, rc);
      refused++;
    }
    buf[off] = old;
  }
  ck_assert_uint_gt(refused, 19000);
  free(buf);
  fixture_free(&f);
}
END_TEST

START_TEST(test_truncated) {
  char err[256], *buf;
  size_t len;
  fixture f;
  dest d;

  buf = written(&f, &len);
  for (size_t cut = 0; cut < len; cut++) {
    dest_init(&d, &f);
    if (td_checkpoint_parse(buf, cut, &d.st, d.t, NT, err, sizeof(err)) != TD_EDATA)
      ck_abort_msg("cut to %zu bytes: accepted", cut);
    if (!dest_untouched(&d))
      ck_abort_msg("cut to %zu bytes: output written", cut);
  }
  /* a truncated file on disk: the message names it */
  ck_assert_int_eq(truncate(f.path, (off_t)(len - 3)), 0);
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), TD_EDATA);
  ck_assert_ptr_nonnull(strstr(err, f.path));
  ck_assert_ptr_nonnull(strstr(err, "damaged"));
  /* and one with bytes appended */
  {
    char *more = malloc(len + 8);
    ck_assert_ptr_nonnull(more);
    memcpy(more, buf, len);
    memset(more + len, 0, 8);
    ck_assert_int_eq(td_checkpoint_parse(more, len + 8, &d.st, d.t, NT, err, sizeof(err)),
                     TD_EDATA);
    free(more);
  }
  ck_assert(dest_untouched(&d));
  free(buf);
  fixture_free(&f);
}
END_TEST

START_TEST(test_version_and_format) {
  const td_st_meta v2[] = {{"format", TD_CKPT_FORMAT}, {"version", "2"}};
  const td_st_meta other[] = {{"format", "something-else"}, {"version", "1"}};
  td_st_tensor w = {"0.weight", "F32", 2, {W_OUT, W_IN}, NULL, W_OUT * W_IN * 4};
  char err[256];
  fixture f;
  dest d;

  fixture_init(&f);
  w.data = f.w;
  ck_assert_int_eq(td_safetensors_write(f.path, &w, 1, v2, 2), 0);
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, 1, err, sizeof(err)), TD_EVERSION);
  ck_assert_msg(strstr(err, "version 2") != NULL && strstr(err, "version 1") != NULL, "%s",
                err);
  ck_assert_int_eq(td_safetensors_write(f.path, &w, 1, other, 2), 0);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, 1, err, sizeof(err)), TD_EDATA);
  ck_assert_ptr_nonnull(strstr(err, "not a traind checkpoint"));
  ck_assert_int_eq(td_safetensors_write(f.path, &w, 1, NULL, 0), 0);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, 1, err, sizeof(err)), TD_EDATA);
  ck_assert(dest_untouched(&d));
  fixture_free(&f);
}
END_TEST

START_TEST(test_expected_tensors) {
  char err[256];
  fixture f;
  dest d;

  fixture_init(&f);
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, f.t, NT, err, sizeof(err)), 0);

  /* another shape (a different model) */
  dest_init(&d, &f);
  d.t[0].shape[0] = W_IN;
  d.t[0].shape[1] = W_OUT;
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), TD_EDATA);
  ck_assert_msg(strstr(err, "0.weight") && strstr(err, "[6, 5]") && strstr(err, "[5, 6]"),
                "%s", err);
  ck_assert(dest_untouched(&d));

  /* another dtype */
  dest_init(&d, &f);
  d.t[4].dtype = "F16";
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), TD_EDATA);
  ck_assert_msg(strstr(err, "BF16") && strstr(err, "F16"), "%s", err);

  /* a tensor it lacks (SGD's buffer asked of an Adam checkpoint) */
  dest_init(&d, &f);
  d.t[2].name = "optim.momentum_buffer";
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), TD_EDATA);
  ck_assert_ptr_nonnull(strstr(err, "optim.momentum_buffer"));

  /* a tensor the caller does not expect */
  dest_init(&d, &f);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT - 1, err, sizeof(err)), TD_EDATA);
  ck_assert_ptr_nonnull(strstr(err, "half.0.weight"));
  ck_assert(dest_untouched(&d));

  /* a missing file */
  unlink(f.path);
  ck_assert_int_eq(td_checkpoint_read(f.path, &d.st, d.t, NT, err, sizeof(err)), TD_ENOENT);
  ck_assert_ptr_nonnull(strstr(err, "no such file"));
  fixture_free(&f);
}
END_TEST

START_TEST(test_write_refuses) {
  char err[256], bad_path[160];
  td_ckpt_tensor t[2];
  fixture f;

  fixture_init(&f);
  memcpy(t, f.t, sizeof(t));
  t[1].name = "0.weight";
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, t, 2, err, sizeof(err)), TD_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "twice"));
  memcpy(t, f.t, sizeof(t));
  t[1].bytes += 4;
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, t, 2, err, sizeof(err)), TD_EINVAL);
  t[1].bytes -= 4;
  t[1].dtype = "F24";
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, t, 2, err, sizeof(err)), TD_EINVAL);
  f.st.loss_scale = 0.0f;
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, f.t, NT, err, sizeof(err)), TD_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "loss scale"));
  f.st.loss_scale = 1.0f;
  memset(f.st.job, 'x', sizeof(f.st.job));
  ck_assert_int_eq(td_checkpoint_write(f.path, &f.st, f.t, NT, err, sizeof(err)), TD_EINVAL);
  f.st.job[0] = '\0';
  snprintf(bad_path, sizeof(bad_path), "%s/no/such/dir/job.ckpt", f.dir);
  ck_assert_int_lt(td_checkpoint_write(bad_path, &f.st, f.t, NT, err, sizeof(err)), 0);
  ck_assert_ptr_nonnull(strstr(err, bad_path));
  ck_assert_int_ne(access(f.path, F_OK), 0); /* nothing was written */
  fixture_free(&f);
}
END_TEST

START_TEST(test_due) {
  const td_ckpt_policy steps = {.every_steps = 100};
  const td_ckpt_policy secs = {.every_seconds = 60.0};
  const td_ckpt_policy both = {.every_steps = 100, .every_seconds = 60.0};
  const td_ckpt_policy never = {0};

  ck_assert(!td_checkpoint_due(&steps, 99, 1e9, 0, 0.0));
  ck_assert(td_checkpoint_due(&steps, 100, 0.0, 0, 0.0));
  ck_assert(td_checkpoint_due(&steps, 250, 0.0, 150, 0.0));
  ck_assert(!td_checkpoint_due(&secs, 5, 59.0, 0, 0.0));
  ck_assert(td_checkpoint_due(&secs, 5, 70.0, 0, 10.0));
  ck_assert(td_checkpoint_due(&both, 3, 61.0, 0, 0.0));
  ck_assert(td_checkpoint_due(&both, 100, 1.0, 0, 0.0));
  ck_assert(!td_checkpoint_due(&both, 99, 59.0, 0, 0.0));
  /* no update since the last one: nothing new to keep */
  ck_assert(!td_checkpoint_due(&both, 100, 1000.0, 100, 0.0));
  ck_assert(!td_checkpoint_due(&never, 1000000, 1e9, 0, 0.0));
}
END_TEST

/* The trainer: a linear layer y = W x + b (OUT x IN) fitted to a fixed
 * linear map by AdamW with gradient clipping, a warm-up + cosine schedule
 * and fp16 loss scaling (gradients rounded to fp16, so large scales
 * overflow and steps are skipped).  Batch t's data is a hash of t alone. */
enum { IN = 8, OUT = 4, NP = OUT * IN + OUT, BATCH = 16, BATCHES = 40, STOP_AFTER = 17 };

typedef struct trainer {
  td_backend *be;
  td_buf p, g, m, v, scratch; /* scratch: clip norm [2], found-inf flag */
  td_lossscale scaler;
  td_schedule sched;
  uint64_t updates;
} trainer;

static void trainer_open(trainer *tr) {
  const td_lossscale_cfg cfg = {.enabled = true, .init_scale = 65536.0f,
                                .growth_factor = 2.0f, .backoff_factor = 0.5f,
                                .growth_interval = 4};
  char err[128];
  float p0[NP];

  memset(tr, 0, sizeof(*tr));
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &tr->be, err, sizeof(err)),
                   0);
  td_buf *bufs[] = {&tr->p, &tr->g, &tr->m, &tr->v};
  for (size_t i = 0; i < TD_ARRAY_SIZE(bufs); i++)
    ck_assert_int_eq(td_backend_alloc(tr->be, NP * sizeof(float), bufs[i]), 0);
  ck_assert_int_eq(td_backend_alloc(tr->be, 3 * sizeof(float), &tr->scratch), 0);
  for (int i = 0; i < NP; i++)
    p0[i] = 0.1f * sinf((float)i);
  td_backend_upload(tr->be, tr->p.ptr, p0, sizeof(p0));
  td_lossscale_init(&tr->scaler, &cfg);
  tr->sched = (td_schedule){.kind = TD_SCHED_COSINE, .lr = 0.05, .t_max = 30,
                            .eta_min = 0.001, .warmup_steps = 5, .warmup_start = 0.2};
  ck_assert_int_eq(td_schedule_check(&tr->sched, NULL, 0), 0);
}

static void trainer_close(trainer *tr) {
  td_buf *bufs[] = {&tr->p, &tr->g, &tr->m, &tr->v, &tr->scratch};
  for (size_t i = 0; i < TD_ARRAY_SIZE(bufs); i++)
    td_backend_free(tr->be, bufs[i]);
  td_backend_destroy(tr->be);
}

static float data_value(uint64_t t, uint64_t i) {
  uint64_t z = t * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (float)((double)((z ^ (z >> 31)) >> 40) / 8388608.0 - 1.0);
}

/* One batch: gradients of the mean squared error on the host, scaled and
 * rounded to fp16 on the device, then the loss scaler, the clip, AdamW. */
static void train_batch(trainer *tr, uint64_t t) {
  float p[NP], g[NP] = {0}, *s = tr->scratch.ptr, flag;
  td_backend *be = tr->be;

  td_backend_download(be, p, tr->p.ptr, sizeof(p));
  ck_assert_int_eq(td_backend_sync(be), 0);
  for (int r = 0; r < BATCH; r++) {
    float x[IN];
    for (int i = 0; i < IN; i++)
      x[i] = 4.0f * data_value(t, (uint64_t)(r * IN + i));
    for (int o = 0; o < OUT; o++) {
      float y = p[OUT * IN + o], want = 0.0f;
      for (int i = 0; i < IN; i++) {
        y += p[o * IN + i] * x[i];
        want += (float)((o + 1) * (i % 3) - 1) * x[i];
      }
      for (int i = 0; i < IN; i++)
        g[o * IN + i] += 2.0f * (y - want) * x[i] / BATCH;
      g[OUT * IN + o] += 2.0f * (y - want) / BATCH;
    }
  }
  for (int i = 0; i < NP; i++)
    g[i] *= td_lossscale_scale(&tr->scaler);
  td_backend_upload(be, tr->g.ptr, g, sizeof(g));
  td_backend_round_half(be, TD_HALF_F16, tr->g.ptr, NP);
  td_backend_fill(be, s + 2, 1, 0.0f);
  td_backend_check_finite(be, tr->g.ptr, NP, s + 2);
  td_backend_scale(be, tr->g.ptr, NP, td_lossscale_inv(&tr->scaler), NULL);
  td_backend_download(be, &flag, s + 2, sizeof(flag));
  ck_assert_int_eq(td_backend_sync(be), 0);
  if (!td_lossscale_update(&tr->scaler, flag != 0.0f))
    return;
  float *xs[1] = {tr->g.ptr};
  size_t ns[1] = {NP};
  td_backend_clip_grad_norm(be, xs, ns, 1, 1.0f, s);
  td_adam_hparams h = {.lr = (float)td_schedule_lr(&tr->sched, tr->updates), .beta1 = 0.9f,
                       .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f,
                       .step = ++tr->updates};
  td_backend_adamw(be, tr->p.ptr, tr->g.ptr, tr->m.ptr, tr->v.ptr, NP, &h);
  ck_assert_int_eq(td_backend_sync(be), 0);
}

/* The trainer's checkpoint tensors over host copies in host[3][NP]. */
static void trainer_tensors(td_ckpt_tensor t[3], float host[3][NP]) {
  static const char *const names[3] = {"params", "optim.exp_avg", "optim.exp_avg_sq"};
  for (int i = 0; i < 3; i++)
    t[i] = (td_ckpt_tensor){names[i], "F32", 1, {NP}, host[i], NP * sizeof(float)};
}

static void trainer_state(trainer *tr, float host[3][NP]) {
  td_backend_download(tr->be, host[0], tr->p.ptr, NP * sizeof(float));
  td_backend_download(tr->be, host[1], tr->m.ptr, NP * sizeof(float));
  td_backend_download(tr->be, host[2], tr->v.ptr, NP * sizeof(float));
  ck_assert_int_eq(td_backend_sync(tr->be), 0);
}

START_TEST(test_resume_same_bits) {
  float straight[3][NP], resumed[3][NP], host[3][NP];
  td_ckpt_tensor t[3];
  td_ckpt_state st;
  char err[256];
  fixture f;
  trainer a, b;
  float lowest = INFINITY;

  fixture_init(&f); /* for its directory */
  trainer_tensors(t, host);

  /* straight through, with a checkpoint after STOP_AFTER batches */
  trainer_open(&a);
  for (uint64_t k = 0; k < BATCHES; k++) {
    train_batch(&a, k);
    lowest = fminf(lowest, td_lossscale_scale(&a.scaler));
    if (k + 1 != STOP_AFTER)
      continue;
    trainer_state(&a, host);
    st = (td_ckpt_state){.job = "toy", .step = a.updates, .epoch = 0, .batch = k + 1,
                         .seed = 1, .loss_scale = td_lossscale_scale(&a.scaler),
                         .good_steps = a.scaler.good_steps, .skipped = a.scaler.skipped};
    ck_assert_msg(td_checkpoint_write(f.path, &st, t, 3, err, sizeof(err)) == 0, "%s", err);
  }
  trainer_state(&a, straight);
  /* the run exercised the scaler both ways */
  ck_assert_uint_gt(a.scaler.skipped, 2);
  ck_assert_float_lt(lowest, 65536.0f);
  ck_assert_uint_lt(a.updates, BATCHES);

  /* a fresh process: from the checkpoint to the end */
  trainer_open(&b);
  memset(host, 0, sizeof(host));
  ck_assert_msg(td_checkpoint_read(f.path, &st, t, 3, err, sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(st.batch, STOP_AFTER);
  td_backend_upload(b.be, b.p.ptr, host[0], NP * sizeof(float));
  td_backend_upload(b.be, b.m.ptr, host[1], NP * sizeof(float));
  td_backend_upload(b.be, b.v.ptr, host[2], NP * sizeof(float));
  ck_assert_int_eq(td_lossscale_restore(&b.scaler, st.loss_scale, st.good_steps), 0);
  b.scaler.skipped = st.skipped;
  b.updates = st.step;
  for (uint64_t k = st.batch; k < BATCHES; k++)
    train_batch(&b, k);
  trainer_state(&b, resumed);

  ck_assert_mem_eq(straight, resumed, sizeof(straight));
  ck_assert_uint_eq(a.updates, b.updates);
  ck_assert_float_eq(td_lossscale_scale(&a.scaler), td_lossscale_scale(&b.scaler));
  ck_assert_uint_eq(a.scaler.good_steps, b.scaler.good_steps);
  ck_assert_uint_eq(a.scaler.skipped, b.scaler.skipped);
  trainer_close(&a);
  trainer_close(&b);
  fixture_free(&f);
}
END_TEST

/* The worker's model: Adam (so its moments are state too), a checkpoint
 * after MODEL_STOP steps as traind-worker writes it (one F32 tensor
 * "state"), a new model resumed from the file: the same bits at the end. */
static const char model_job[] =
    "name: ckpt\n"
    "model:\n"
    "  input: [6, 4]\n"
    "  layers:\n"
    "    - {type: dense, units: 16}\n"
    "    - {type: relu}\n"
    "    - {type: dense, units: 5}\n"
    "data:\n"
    "  format: idx\n"
    "  train: {images: /nonexistent/x.idx, labels: /nonexistent/y.idx}\n"
    "  test: {images: /nonexistent/tx.idx, labels: /nonexistent/ty.idx}\n"
    "train:\n"
    "  batch_size: 8\n"
    "  epochs: 1\n"
    "  seed: 5\n"
    "  optimizer: {type: adam, lr: 0.01}\n";

enum { MODEL_IN = 24, MODEL_BATCH = 8, MODEL_STEPS = 12, MODEL_STOP = 5 };

static void model_batch(uint64_t k, uint8_t px[MODEL_BATCH * MODEL_IN], int32_t lb[MODEL_BATCH]) {
  for (uint32_t i = 0; i < MODEL_BATCH * MODEL_IN; i++)
    px[i] = (uint8_t)((i + 131u * (uint32_t)k) * 2654435761u >> 13);
  for (uint32_t i = 0; i < MODEL_BATCH; i++)
    lb[i] = (uint8_t)((i * 3 + k) % 5);
}

static td_model *model_open(td_backend **be, const td_jobspec *spec) {
  char err[256];
  td_model *m = NULL;

  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, be, err, sizeof(err)), 0);
  ck_assert_msg(td_model_create(*be, spec, MODEL_BATCH, &m, err, sizeof(err)) == 0, "%s", err);
  return m;
}

static void model_steps(td_model *m, uint64_t from, uint64_t to) {
  uint8_t px[MODEL_BATCH * MODEL_IN];
  int32_t lb[MODEL_BATCH];
  td_step_stats st;

  for (uint64_t k = from; k < to; k++) {
    model_batch(k, px, lb);
    ck_assert_int_eq(td_model_train_step(m, px, lb, MODEL_BATCH, &st), 0);
  }
}

START_TEST(test_model_resume_same_bits) {
  td_jobspec spec;
  td_backend *be_a, *be_b;
  td_model *a, *b;
  td_model_progress p;
  td_ckpt_state st;
  td_ckpt_tensor t;
  float *state, *straight, *resumed;
  uint64_t n, np;
  char err[256];
  fixture f;

  ck_assert_msg(td_jobspec_parse(model_job, strlen(model_job), NULL, &spec, err,
                                 sizeof(err)) == 0, "%s", err);
  fixture_init(&f); /* for its directory */
  a = model_open(&be_a, &spec);
  n = td_model_state_floats(a);
  np = td_model_nparams(a);
  ck_assert_uint_gt(n, np); /* parameters and Adam's moments */
  /* packed end to end: none of the arenas' alignment padding, so the size
   * (and the layout) is the one checkpoints had before weights were aligned */
  ck_assert_uint_eq(n, 3 * (24 * 16 + 16 + 16 * 5 + 5));
  ck_assert_uint_gt(np, 24 * 16 + 16 + 16 * 5 + 5);
  state = malloc(n * sizeof(float));
  straight = malloc(np * sizeof(float));
  resumed = malloc(np * sizeof(float));
  ck_assert(state != NULL && straight != NULL && resumed != NULL);
  t = (td_ckpt_tensor){"state", "F32", 1, {n}, state, n * sizeof(float)};

  model_steps(a, 0, MODEL_STOP);
  ck_assert_int_eq(td_model_get_state(a, state), 0);
  td_model_get_progress(a, &p);
  ck_assert_uint_eq(p.steps, MODEL_STOP);
  st = (td_ckpt_state){.job = "ckpt", .step = p.steps, .batch = p.steps, .seed = 5,
                       .loss_scale = p.loss_scale, .good_steps = p.good_steps,
                       .skipped = p.skipped};
  ck_assert_msg(td_checkpoint_write(f.path, &st, &t, 1, err, sizeof(err)) == 0, "%s", err);
  model_steps(a, MODEL_STOP, MODEL_STEPS);
  ck_assert_int_eq(td_model_get_params(a, straight), 0);

  /* a new model, as a restarted worker builds it */
  b = model_open(&be_b, &spec);
  memset(state, 0, n * sizeof(float));
  ck_assert_int_eq(td_model_set_state(b, state, n - 1), TD_EINVAL);
  ck_assert_msg(td_checkpoint_read(f.path, &st, &t, 1, err, sizeof(err)) == 0, "%s", err);
  ck_assert_int_eq(td_model_set_state(b, state, n), 0);
  td_model_get_progress(b, &p);
  p.steps = st.step;
  p.loss_scale = st.loss_scale;
  p.good_steps = st.good_steps;
  p.skipped = st.skipped;
  ck_assert_int_eq(td_model_set_progress(b, &p), 0);
  ck_assert_uint_eq(td_model_steps(b), MODEL_STOP);
  model_steps(b, st.batch, MODEL_STEPS);
  ck_assert_int_eq(td_model_get_params(b, resumed), 0);

  ck_assert_uint_eq(td_model_steps(a), td_model_steps(b));
  ck_assert_mem_eq(straight, resumed, np * sizeof(float));
  td_model_destroy(a);
  td_model_destroy(b);
  td_backend_destroy(be_a);
  td_backend_destroy(be_b);
  free(state);
  free(straight);
  free(resumed);
  fixture_free(&f);
}
END_TEST

int main(void) {
  Suite *s = suite_create("checkpoint");
  TCase *tc = tcase_create("checkpoint");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_round_trip);
  tcase_add_test(tc, test_callbacks_state);
  tcase_add_test(tc, test_callbacks_partial);
  tcase_add_test(tc, test_every_bit_flip);
  tcase_add_test(tc, test_random_byte_changes);
  tcase_add_test(tc, test_truncated);
  tcase_add_test(tc, test_version_and_format);
  tcase_add_test(tc, test_expected_tensors);
  tcase_add_test(tc, test_write_refuses);
  tcase_add_test(tc, test_due);
  tcase_add_test(tc, test_resume_same_bits);
  tcase_add_test(tc, test_model_resume_same_bits);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
