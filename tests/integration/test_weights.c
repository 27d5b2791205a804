/* Weights in, with the real traind, worker, loader and client: a job of 1
 * epoch continued by 1 more (`submit --continue`) ends with the weights of
 * the same job file run for 2 epochs, to the bit, a continue sent twice
 * with one key makes one job, and a job that is not finished cannot be
 * continued; a job started from another's model
 * (`init:`) with its first layer frozen (`trainable: false`) ends with that
 * layer's tensors bit for bit the file's and the others trained, also
 * once continued (without the init file, which it no longer reads), and a
 * model file of another shape is refused at submit by the client and, past
 * the client, by the worker, naming the tensor. */
#include <check.h>
#include <nanomsg/nn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "safetensors.h"
#include "util.h"

#define WAIT_MS 120000

static th_daemon g_d;
static int g_sock = -1;

static void setup(void) { memset(&g_d, 0, sizeof(g_d)); }

/* Only reached when the test passed: a failure keeps the directory. */
static void teardown(void) {
  if (g_sock >= 0)
    nn_close(g_sock);
  g_sock = -1;
  if (g_d.pid > 0)
    ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly:\n%s",
                  th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}

static void start(void) {
  int rc;

  ck_assert(th_daemon_init(&g_d, "1GiB", NULL, 0) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert(g_sock >= 0);
}

static uint64_t submit(const char *yaml, const char *key) {
  char err[512] = "";
  uint64_t id = 0;
  int rc = th_submit(g_sock, yaml, key, &id, err, sizeof(err));

  ck_assert_msg(rc == 0, "submit %s: %s %s", key, td_err_name(rc), err);
  return id;
}

static void wait_state(uint64_t id, const char *want) {
  char last[32] = "", why[512] = "";
  int rc = th_wait_state(g_sock, id, want, WAIT_MS, last, sizeof(last));

  if (rc != 0)
    th_show_str(g_sock, id, "error", why, sizeof(why));
  ck_assert_msg(rc == 0, "job %llu is %s, not %s (%s); traind's log ends:\n%s",
                (unsigned long long)id, last, want, why, th_log_tail(&g_d));
}

static td_st_file *model_of(uint64_t id) {
  char path[1024], err[512];
  td_st_file *f = NULL;

  ck_assert_int_eq(th_show_str(g_sock, id, "model", path, sizeof(path)), 0);
  ck_assert_msg(td_safetensors_load(path, 64 << 20, &f, err, sizeof(err)) == 0, "%s", err);
  return f;
}

/* Whether tensor name holds the same bits in both files. */
static int same_tensor(const td_st_file *a, const td_st_file *b, const char *name) {
  td_st_tensor x, y;

  ck_assert_int_eq(td_safetensors_find(a, name, &x), 0);
  ck_assert_int_eq(td_safetensors_find(b, name, &y), 0);
  return x.bytes == y.bytes && memcmp(x.data, y.data, x.bytes) == 0;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");

  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

START_TEST(continue_ends_as_the_longer_job) {
  char one[4096], two[4096], long_job[4096], out[4096], err[4096], sid[24], path[512];
  uint64_t a, b, c, d, epoch = 0, epochs = 0;
  td_st_file *fb, *fc;
  struct stat st;
  td_msg *m = NULL;
  td_pack p;
  int code = -1;

  /* 500 samples in batches of 50: a fraction of a second an epoch */
  th_job_yaml(one, sizeof(one), "cont", 32, 1, 500, 50);
  th_job_yaml(two, sizeof(two), "cont", 32, 2, 500, 50);
  start();
  a = submit(one, "one");
  b = submit(two, "two");
  wait_state(a, "succeeded");
  wait_state(b, "succeeded");
  /* the one-epoch job kept its final state for --continue */
  snprintf(path, sizeof(path), "%s/jobs/%llu/final.tdck", g_d.state, (unsigned long long)a);
  ck_assert_msg(stat(path, &st) == 0 && S_ISREG(st.st_mode), "no final state at %s", path);

  snprintf(sid, sizeof(sid), "%llu", (unsigned long long)a);
  ck_assert_int_eq(th_client(g_d.sock, out, sizeof(out), err, sizeof(err), "submit",
                             "--continue", sid, "--epochs", "1", NULL), 0);
  ck_assert_msg(sscanf(out, "submitted job %llu", (unsigned long long *)&c) == 1, "%s", out);
  wait_state(c, "succeeded");
  ck_assert_int_eq(th_show_u64(g_sock, c, "epochs", &epochs), 0);
  ck_assert_int_eq(th_show_u64(g_sock, c, "epoch", &epoch), 0);
  ck_assert_uint_eq(epochs, 2);
  ck_assert_uint_eq(epoch, 2);
  fb = model_of(b);
  fc = model_of(c);
  ck_assert_uint_eq(td_safetensors_count(fb), td_safetensors_count(fc));
  for (size_t i = 0; i < td_safetensors_count(fb); i++) {
    td_st_tensor t;

    td_safetensors_get(fb, i, &t);
    ck_assert_msg(same_tensor(fb, fc, t.name), "tensor %s: the continued job differs from the "
                  "2-epoch job", t.name);
  }
  td_safetensors_free(fb);
  td_safetensors_free(fc);

  /* the same key again is the same job (REQ resends a request whose
   * reply was lost) */
  for (int i = 0; i < 2; i++) {
    uint64_t got = 0;
    int dup = -1;

    td_pack_init(&p);
    td_pack_request(&p, "continue", 3);
    td_pack_kv_u64(&p, "id", a);
    td_pack_kv_u64(&p, "epochs", 3);
    td_pack_kv_str(&p, "key", "twice");
    ck_assert_int_eq(th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err)), 0);
    td_pack_free(&p);
    ck_assert_msg(code == 0, "continue: %s", err);
    ck_assert_int_eq(td_obj_u64(td_msg_root(m), "id", &got), 0);
    ck_assert_int_eq(td_obj_bool(td_msg_root(m), "duplicate", &dup), 0);
    td_msg_free(m);
    m = NULL;
    ck_assert_int_eq(dup, i);
    if (i == 0)
      d = got;
    ck_assert_uint_eq(got, d);
  }
  ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", d, NULL, &code, err, sizeof(err)), 0);

  /* a job that has not finished cannot be continued, nor a missing one */
  th_job_yaml(long_job, sizeof(long_job), "long", 32, 1000, 500, 50);
  d = submit(long_job, "long");
  td_pack_init(&p);
  td_pack_request(&p, "continue", 3);
  td_pack_kv_u64(&p, "id", d);
  td_pack_kv_u64(&p, "epochs", 1);
  td_pack_kv_str(&p, "key", "early");
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err)), 0);
  td_pack_free(&p);
  td_msg_free(m);
  ck_assert_int_eq(code, TD_ESTATE);
  ck_assert_msg(strstr(err, "; --continue needs a finished job") != NULL, "%s", err);
  ck_assert_int_eq(th_client(g_d.sock, out, sizeof(out), err, sizeof(err), "submit",
                             "--continue", "999", "--epochs", "1", NULL), 3);
  ck_assert_msg(strstr(err, "no job with id 999") != NULL, "%s", err);
  ck_assert_int_eq(th_client(g_d.sock, out, sizeof(out), err, sizeof(err), "submit",
                             "--continue", sid, NULL), 2);
  ck_assert_msg(strstr(err, "needs --epochs N") != NULL, "%s", err);
  ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", d, NULL, &code, err, sizeof(err)), 0);
}
END_TEST

START_TEST(init_with_a_frozen_layer) {
  char base[4096], yaml[8192], wrong[8192], model[1024], path[512], out[4096], err[4096];
  char sid[24];
  const char *layer = "{type: dense, units: 32}";
  uint64_t a, c, e, f;
  td_st_file *fa, *fe;
  char *at;

  th_job_yaml(base, sizeof(base), "first", 32, 1, 500, 50);
  start();
  a = submit(base, "first");
  wait_state(a, "succeeded");
  ck_assert_int_eq(th_show_str(g_sock, a, "model", model, sizeof(model)), 0);

  /* the same model, its first layer frozen, from the first job's file */
  ck_assert_ptr_nonnull(at = strstr(base, layer));
  snprintf(yaml, sizeof(yaml), "%.*s{type: dense, units: 32, trainable: false}%sinit: %s\n",
           (int)(at - base), base, at + strlen(layer), model);
  e = submit(yaml, "frozen");
  wait_state(e, "succeeded");
  fa = model_of(a);
  fe = model_of(e);
  ck_assert(same_tensor(fa, fe, "0.weight"));
  ck_assert(same_tensor(fa, fe, "0.bias"));
  ck_assert(!same_tensor(fa, fe, "2.weight"));
  td_safetensors_free(fe);

  /* 64 units: the client names the tensor at submit; past it, the worker */
  snprintf(wrong, sizeof(wrong), "%.*s{type: dense, units: 64}%sinit: %s\n", (int)(at - base),
           base, at + strlen(layer), model);
  snprintf(path, sizeof(path), "%s/wrong.yaml", g_d.dir);
  write_file(path, wrong);
  ck_assert_int_eq(th_client(g_d.sock, out, sizeof(out), err, sizeof(err), "submit", path,
                             NULL), 3);
  ck_assert_msg(strstr(err, "tensor '0.weight' has shape [32, 784], the model's is [64, 784]"),
                "%s", err);
  ck_assert_msg(strstr(err, model) != NULL, "%s", err);
  f = submit(wrong, "wrong");
  wait_state(f, "failed");
  ck_assert_int_eq(th_show_str(g_sock, f, "error", err, sizeof(err)), 0);
  ck_assert_msg(strstr(err, "tensor '0.weight' has shape [32, 784], the model's is [64, 784]"),
                "%s", err);

  /* continued, the frozen job starts from its final state: the init file,
   * gone by now, is not read again, and the layer stays frozen */
  ck_assert_int_eq(unlink(model), 0);
  snprintf(sid, sizeof(sid), "%llu", (unsigned long long)e);
  ck_assert_int_eq(th_client(g_d.sock, out, sizeof(out), err, sizeof(err), "submit",
                             "--continue", sid, "--epochs", "1", NULL), 0);
  ck_assert_msg(sscanf(out, "submitted job %llu", (unsigned long long *)&c) == 1, "%s", out);
  wait_state(c, "succeeded");
  fe = model_of(c);
  ck_assert(same_tensor(fa, fe, "0.weight"));
  ck_assert(same_tensor(fa, fe, "0.bias"));
  td_safetensors_free(fa);
  td_safetensors_free(fe);
}
END_TEST

int main(void) {
  Suite *s = suite_create("weights");
  TCase *tc = tcase_create("weights");

  tcase_set_timeout(tc, 400);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, continue_ends_as_the_longer_job);
  tcase_add_test(tc, init_with_a_frozen_layer);
  suite_add_tcase(s, tc);
  return th_run(s, 1);
}
