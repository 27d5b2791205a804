/* The job description (proto/jobdesc.h): every example job survives the
 * trip through it unchanged; a description of another version, a damaged
 * one and one with a value out of the job file's bounds are refused with
 * the field named; and the real worker and loader, given a description
 * of a newer version, say so and exit with their usage status. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "jobdesc.h"
#include "util.h"

static char err[512];

static void load_example(const char *name, td_jobspec *spec) {
  const char *src = getenv("TD_SOURCE_ROOT");
  char path[1024];

  snprintf(path, sizeof(path), "%s/examples/%s.yaml", src ? src : ".", name);
  ck_assert_msg(td_jobspec_load(path, spec, err, sizeof(err)) == 0, "%s", err);
}

/* spec's description, malloc'd. */
static void *encode(const td_jobspec *spec, size_t *len) {
  td_pack p;
  void *out;

  td_pack_init(&p);
  ck_assert_int_eq(td_jobdesc_encode(spec, &p), 0);
  *len = td_pack_len(&p);
  out = malloc(*len);
  ck_assert_ptr_nonnull(out);
  memcpy(out, td_pack_data(&p), *len);
  td_pack_free(&p);
  return out;
}

static int decode(const void *buf, size_t len, td_jobspec *out) {
  err[0] = '\0';
  return td_jobdesc_decode(buf, len, out, err, sizeof(err));
}

/* Struct padding is unspecified after an assignment (the parser assigns
 * td_lossscale_defaults()'s value): the padded member is copied member by
 * member into zeroed bytes before the specs are compared byte for byte. */
static void scrub(td_jobspec *s) {
  td_lossscale_cfg ls = s->loss_scale;

  memset(&s->loss_scale, 0, sizeof(s->loss_scale));
  s->loss_scale.enabled = ls.enabled;
  s->loss_scale.init_scale = ls.init_scale;
  s->loss_scale.growth_factor = ls.growth_factor;
  s->loss_scale.backoff_factor = ls.backoff_factor;
  s->loss_scale.growth_interval = ls.growth_interval;
}

static size_t first_difference(const void *a, const void *b, size_t n) {
  size_t i = 0;

  while (i < n && ((const unsigned char *)a)[i] == ((const unsigned char *)b)[i])
    i++;
  return i;
}

START_TEST(every_example_survives_the_trip) {
  static const char *const examples[] = {"fashion-mnist-mlp", "fashion-mnist-cnn",
                                         "fashion-mnist-cnn-bf16", "fashion-mnist-conv1d",
                                         "fashion-mnist-images", "fashion-mnist-resmlp",
                                         "fashion-mnist-resnet", "text-transformer",
                                         "csv-regression"};

  for (size_t i = 0; i < TD_ARRAY_SIZE(examples); i++) {
    td_jobspec a, b;
    size_t la, lb;
    void *da, *db;

    load_example(examples[i], &a);
    a.sample_dtype = TD_DTYPE_U8;
    da = encode(&a, &la);
    ck_assert_msg(decode(da, la, &b) == 0, "%s: %s", examples[i], err);
    /* the same members, to the bit: the second description is the first */
    db = encode(&b, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert(memcmp(da, db, la) == 0);
    /* and the spec itself, every byte: a member the description's table
     * forgets (one added to td_jobspec later) shows here */
    scrub(&a);
    scrub(&b);
    ck_assert_msg(memcmp(&a, &b, sizeof(a)) == 0, "%s: the decoded spec differs at byte %zu",
                  examples[i], first_difference(&a, &b, sizeof(a)));
    ck_assert_str_eq(a.name, b.name);
    ck_assert_int_eq(a.nlayers, b.nlayers);
    for (int k = 0; k < a.nlayers; k++) {
      ck_assert_int_eq(a.layers[k].type, b.layers[k].type);
      ck_assert_uint_eq(a.layers[k].units, b.layers[k].units);
      ck_assert_uint_eq(a.layers[k].kernel, b.layers[k].kernel);
      ck_assert(a.layers[k].eps == b.layers[k].eps);
    }
    ck_assert_str_eq(a.train.images, b.train.images);
    ck_assert(a.opt.lr == b.opt.lr && a.schedule.lr == b.schedule.lr);
    ck_assert_int_eq(a.precision, b.precision);
    ck_assert_int_eq(a.nremedies, b.nremedies);
    ck_assert_int_eq(b.sample_dtype, TD_DTYPE_U8);
    ck_assert(a.ckpt_every_seconds == b.ckpt_every_seconds);
    ck_assert_uint_eq(a.seed, b.seed);
    free(da);
    free(db);
  }
}
END_TEST

/* Callbacks, all on and none at its default, come back to the byte. */
START_TEST(callbacks_survive_the_trip) {
  td_jobspec a, b;
  size_t la, lb;
  void *da, *db;

  load_example("fashion-mnist-mlp", &a);
  a.sample_dtype = TD_DTYPE_U8;
  a.val_fraction = 0.1f;
  a.callbacks = (td_callbacks){
      .early_stop = {1, TD_MONITOR_VAL_ACCURACY, 3, 0.25f},
      .keep_best = {1, TD_MONITOR_VAL_ACCURACY},
      .plateau = {1, TD_MONITOR_VAL_ACCURACY, 0.5f, 4, 0.125f, 2, 1e-5f}};
  da = encode(&a, &la);
  ck_assert_msg(decode(da, la, &b) == 0, "%s", err);
  ck_assert_msg(memcmp(&a, &b, sizeof(a)) == 0, "the decoded spec differs at byte %zu",
                first_difference(&a, &b, sizeof(a)));
  db = encode(&b, &lb);
  ck_assert_uint_eq(la, lb);
  ck_assert(memcmp(da, db, la) == 0);
  free(da);
  free(db);
}
END_TEST

/* A description of s after change(s), and the decoder's verdict on it. */
static int with(void (*change)(td_jobspec *)) {
  td_jobspec s, out;
  size_t len;
  void *d;
  int rc;

  load_example("fashion-mnist-cnn", &s);
  change(&s);
  d = encode(&s, &len);
  rc = decode(d, len, &out);
  free(d);
  return rc;
}

static void big_batch(td_jobspec *s) { s->batch_size = 70000; }
static void big_units(td_jobspec *s) { s->layers[s->nlayers - 1].units = 70000; }
static void bad_layer(td_jobspec *s) { s->layers[1].type = TD_LAYER__COUNT; }
static void zero_lr(td_jobspec *s) { s->opt.lr = 0; }
static void nan_std(td_jobspec *s) { s->norm_std = __builtin_nanf(""); }
static void bad_dtype(td_jobspec *s) { s->sample_dtype = TD_DTYPE_I64; }
static void broken_chain(td_jobspec *s) { s->input_dims[1] = s->input_dims[2] = 1; } /* pooled away */
static void twice(td_jobspec *s) {
  s->nremedies = 2;
  s->remedies[0] = s->remedies[1] = TD_REMEDY_ACCUMULATE;
}
static void micro_over_batch(td_jobspec *s) { s->min_micro_batch = s->batch_size + 1; }
static void no_name(td_jobspec *s) { s->name[0] = '\0'; }
static void big_factor(td_jobspec *s) {
  s->callbacks.plateau = (td_cb_plateau){.enabled = 1, .factor = 1.5f};
}
static void zero_factor(td_jobspec *s) { s->callbacks.plateau = (td_cb_plateau){.enabled = 1}; }
static void bad_monitor(td_jobspec *s) { s->callbacks.early_stop.monitor = TD_MONITOR__COUNT; }

START_TEST(a_value_out_of_bounds_is_refused_by_name) {
  static const struct {
    void (*change)(td_jobspec *);
    const char *names;
  } cases[] = {
      {big_batch, "batch_size"},    {big_units, "units"},         {bad_layer, "layers[1].type"},
      {zero_lr, "opt.lr"},          {nan_std, "norm_std"},        {bad_dtype, "sample_dtype"},
      {broken_chain, "layers[2]"}, {twice, "remedies"},          {micro_over_batch, "min_micro"},
      {no_name, "name"},            {big_factor, "callbacks.plateau.factor"},
      {zero_factor, "callbacks.plateau.factor"}, {bad_monitor, "callbacks.early_stop.monitor"},
  };

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    int rc = with(cases[i].change);

    ck_assert_msg(rc == TD_EJOBSPEC, "case %zu (%s): %s (%s)", i, cases[i].names,
                  td_err_name(rc), err);
    ck_assert_msg(strstr(err, cases[i].names) != NULL, "case %zu: '%s' lacks '%s'", i, err,
                  cases[i].names);
  }
}
END_TEST

START_TEST(another_version_is_refused_as_such) {
  td_jobspec s, out;
  td_pack p;
  size_t len;
  unsigned char *d;

  load_example("fashion-mnist-mlp", &s);
  d = encode(&s, &len);
  /* "v" is the first entry: map32 header, fixstr "v", then the version */
  ck_assert_uint_eq(d[0], 0xdf);
  ck_assert_uint_eq(d[5], 0xa1);
  ck_assert_uint_eq(d[6], 'v');
  ck_assert_uint_eq(d[7], TD_JOBDESC_VERSION);
  d[7] = TD_JOBDESC_VERSION + 1;
  ck_assert_int_eq(decode(d, len, &out), TD_EVERSION);
  ck_assert_msg(strstr(err, "newer") != NULL, "%s", err);
  d[7] = 0;
  ck_assert_int_eq(decode(d, len, &out), TD_EVERSION);
  ck_assert_msg(strstr(err, "older") != NULL, "%s", err);
  free(d);
  /* no version at all */
  td_pack_init(&p);
  td_pack_map(&p, 1);
  td_pack_kv_str(&p, "name", "x");
  ck_assert_int_eq(decode(td_pack_data(&p), td_pack_len(&p), &out), TD_EJOBSPEC);
  ck_assert_msg(strstr(err, "version") != NULL, "%s", err);
  td_pack_free(&p);
}
END_TEST

START_TEST(a_damaged_description_is_refused) {
  td_jobspec s, out;
  td_pack p;
  size_t len;
  void *d;

  load_example("fashion-mnist-mlp", &s);
  d = encode(&s, &len);
  /* cut anywhere: never accepted, never a crash */
  for (size_t n = 0; n < len; n += 7)
    ck_assert_int_ne(decode(d, n, &out), 0);
  /* a field it does not know */
  ck_assert_int_eq(td_pack_request_add(&p, d, len, "extra", "1"), 0);
  ck_assert_int_eq(decode(td_pack_data(&p), td_pack_len(&p), &out), TD_EJOBSPEC);
  ck_assert_msg(strstr(err, "'extra'") != NULL, "%s", err);
  td_pack_free(&p);
  /* a field missing */
  td_pack_init(&p);
  td_pack_map(&p, 2);
  td_pack_kv_u64(&p, "v", TD_JOBDESC_VERSION);
  td_pack_kv_str(&p, "name", "x");
  ck_assert_int_eq(decode(td_pack_data(&p), td_pack_len(&p), &out), TD_EJOBSPEC);
  ck_assert_msg(strstr(err, "lacks field 'input_dims'") != NULL, "%s", err);
  td_pack_free(&p);
  /* over the limit */
  ck_assert_int_eq(decode(d, TD_JOBDESC_MAX + 1, &out), TD_ETOOBIG);
  free(d);
}
END_TEST

/* Inputs that once broke the decoder (tests/fuzz/corpus/hostile/jobdesc):
 * each is refused, with a reason. */
START_TEST(the_hostile_seeds_are_refused) {
  static const char *const seeds[] = {"key-with-nul", "float-under-its-bound-once-stored"};
  const char *src = getenv("TD_SOURCE_ROOT");

  for (size_t i = 0; i < TD_ARRAY_SIZE(seeds); i++) {
    char path[1024], *data;
    td_jobspec out;
    size_t len;

    snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/hostile/jobdesc/%s", src ? src : ".",
             seeds[i]);
    ck_assert_msg(td_read_file(path, 1 << 20, &data, &len) == 0, "cannot read %s", path);
    ck_assert_int_eq(decode(data, len, &out), TD_EJOBSPEC);
    ck_assert(err[0] != '\0');
    free(data);
  }
}
END_TEST

/* Run a program of the build with args; its exit status, its stderr in log. */
static int run(const char *const *argv, char *log, size_t cap) {
  char path[] = "/tmp/test-jobdesc-XXXXXX";
  int fd = mkstemp(path), status;
  ssize_t n;
  pid_t pid;

  ck_assert_int_ge(fd, 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(fd, 2);
    /* Check's own pipe is no events fd for the worker */
    for (int i = 3; i < 1024; i++)
      close(i);
    execv(argv[0], (char **)argv);
    _exit(127);
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  n = pread(fd, log, cap - 1, 0);
  log[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

START_TEST(worker_and_loader_refuse_a_newer_description) {
  const char *build = getenv("TD_BUILD_ROOT");
  char worker[1024], loader[1024], desc[] = "/tmp/test-jobdesc-XXXXXX", log[8192];
  td_jobspec s;
  unsigned char *d;
  size_t len;
  int fd;

  if (build == NULL) {
    printf("SKIP worker_and_loader_refuse_a_newer_description: TD_BUILD_ROOT is not set\n");
    return;
  }
  snprintf(worker, sizeof(worker), "%s/daemon/traind-worker", build);
  snprintf(loader, sizeof(loader), "%s/daemon/traind-loader", build);
  load_example("fashion-mnist-mlp", &s);
  d = encode(&s, &len);
  d[7] = TD_JOBDESC_VERSION + 1;
  fd = mkstemp(desc);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, d, len), (ssize_t)len);
  close(fd);
  free(d);
  {
    const char *const argv[] = {worker, "--job", desc, "--ring", "/traind-test-none",
                                "--device", "cpu0", "--budget", "1GiB", "--micro-batch", "1",
                                "--output", "/tmp/none.safetensors", NULL};

    ck_assert_int_eq(run(argv, log, sizeof(log)), 2);
    ck_assert_msg(strstr(log, "format version 2, newer") != NULL, "%s", log);
  }
  {
    const char *const argv[] = {loader, "--job", desc, "--ring", "/traind-test-none", NULL};

    ck_assert_int_eq(run(argv, log, sizeof(log)), 2);
    ck_assert_msg(strstr(log, "format version 2, newer") != NULL, "%s", log);
  }
  unlink(desc);
}
END_TEST

int main(void) {
  Suite *s = suite_create("jobdesc");
  TCase *tc = tcase_create("jobdesc");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, every_example_survives_the_trip);
  tcase_add_test(tc, callbacks_survive_the_trip);
  tcase_add_test(tc, a_value_out_of_bounds_is_refused_by_name);
  tcase_add_test(tc, another_version_is_refused_as_such);
  tcase_add_test(tc, a_damaged_description_is_refused);
  tcase_add_test(tc, the_hostile_seeds_are_refused);
  tcase_add_test(tc, worker_and_loader_refuse_a_newer_description);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
