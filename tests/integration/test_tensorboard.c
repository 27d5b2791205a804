/* Monitoring a job's training: a real traind trains a small job (with a
 * validation split, a schedule and an injected OOM, so every kind of
 * scalar appears) while the test records the progress and eval events it
 * publishes; then
 *
 *   test_tensorboard curve    `show`'s loss_curve is exactly those
 *                             progress events, `traind-client show` draws it
 *                             and `--json show` gives its points; the job's
 *                             event file holds whole records with every tag,
 *                             its train/loss equal to the progress events';
 *   test_tensorboard reader   TensorBoard's own reader (EventAccumulator, in
 *                             the virtual environment tests/tensorboard/
 *                             setup.sh makes) reads the job directory and
 *                             tests/tensorboard/check_events.py compares its
 *                             scalars with the events; skipped (77) where
 *                             that environment is missing. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "tfevent.pb-c.h"
#include "tfevents.h"
#include "util.h"

#define EVERY 4     /* tensorboard.every_steps */
#define EPOCHS 2
#define MAX_SEEN 4096

typedef struct progress {
  uint64_t step; /* global: (epoch - 1) * steps + step */
  double loss, acc;
} progress;

typedef struct eval {
  uint64_t epoch;
  double acc, loss, val_acc, val_loss;
} eval;

static th_daemon g_d;
static int g_sock = -1, g_sub = -1;
static progress g_prog[MAX_SEEN];
static size_t g_nprog;
static eval g_eval[EPOCHS + 1];
static size_t g_neval;
static uint64_t g_steps; /* per epoch */

/* A small job with every kind of scalar: validation, a cosine schedule,
 * a memory request that fails once (an OOM and a re-plan). */
static void job_yaml(char *buf, size_t cap) {
  char base[4096];
  const char *train;

  th_job_yaml(base, sizeof(base), "watched", 64, EPOCHS, 6000, 32);
  train = strstr(base, "train:\n  batch_size");
  ck_assert_ptr_nonnull(train);
  snprintf(buf, cap,
           "%.*s  validation: {fraction: 0.1}\n%s"
           "  schedule: {type: cosine, t_max: 60}\n"
           "memory:\n  fail_alloc: 100\n"
           "tensorboard:\n  every_steps: %d\n",
           (int)(train - base), base, train, EVERY);
}

static void record(const char *topic, const msgpack_object *m) {
  uint64_t epoch = 0, step = 0, steps = 0;

  if (strcmp(topic, TD_TOPIC_JOB_PROGRESS) == 0 && g_nprog < MAX_SEEN) {
    progress *p = &g_prog[g_nprog];

    ck_assert_int_eq(td_obj_u64(m, "epoch", &epoch), 0);
    ck_assert_int_eq(td_obj_u64(m, "step", &step), 0);
    ck_assert_int_eq(td_obj_u64(m, "steps", &steps), 0);
    ck_assert_int_eq(td_obj_f64(m, "loss", &p->loss), 0);
    ck_assert_int_eq(td_obj_f64(m, "train_accuracy", &p->acc), 0);
    p->step = (epoch - 1) * steps + step;
    g_steps = steps;
    /* traind publishes each report once; a repeat would be a bug here */
    if (g_nprog == 0 || p->step > g_prog[g_nprog - 1].step)
      g_nprog++;
  } else if (strcmp(topic, TD_TOPIC_JOB_EVAL) == 0 && g_neval <= EPOCHS) {
    eval *e = &g_eval[g_neval++];

    ck_assert_int_eq(td_obj_u64(m, "epoch", &e->epoch), 0);
    ck_assert_int_eq(td_obj_f64(m, "accuracy", &e->acc), 0);
    ck_assert_int_eq(td_obj_f64(m, "loss", &e->loss), 0);
    ck_assert_int_eq(td_obj_f64(m, "val_accuracy", &e->val_acc), 0);
    ck_assert_int_eq(td_obj_f64(m, "val_loss", &e->val_loss), 0);
  }
}

/* Start traind, train the job to its end while recording its events; the
 * job's id. */
static uint64_t run_job(void) {
  char yaml[8192], err[512], addr[256];
  int timeout = 1000, rc;
  double end = td_now_mono() + 180;
  uint64_t id = 0, eid;
  char state[16] = "";

  g_nprog = g_neval = 0;
  ck_assert_int_eq(th_daemon_init(&g_d, "1GiB", NULL, 0), 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start (%s); see %s", td_strerror(rc), g_d.log);
  g_sock = th_connect(g_d.sock, 30000);
  ck_assert_int_ge(g_sock, 0);
  snprintf(addr, sizeof(addr), "ipc://%s/status.sock", g_d.dir);
  g_sub = nn_socket(AF_SP, NN_SUB);
  ck_assert_int_ge(g_sub, 0);
  ck_assert_int_eq(nn_setsockopt(g_sub, NN_SUB, NN_SUB_SUBSCRIBE, "", 0), 0);
  ck_assert_int_eq(nn_setsockopt(g_sub, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout, sizeof(timeout)),
                   0);
  ck_assert_int_ge(nn_connect(g_sub, addr), 0);
  th_msleep(500); /* nanomsg connects in the background */

  job_yaml(yaml, sizeof(yaml));
  rc = th_submit(g_sock, yaml, "watched", &id, err, sizeof(err));
  ck_assert_msg(rc == 0, "submit: %s", err);
  while (strcmp(state, "succeeded") != 0) {
    const char *topic;
    const void *body;
    size_t blen;
    char *buf = NULL;
    td_msg *m;
    int n;

    ck_assert_msg(td_now_mono() < end, "the job did not finish; see %s", g_d.log);
    n = nn_recv(g_sub, &buf, NN_MSG, 0);
    if (n < 0) {
      ck_assert_int_eq(errno, ETIMEDOUT);
      continue;
    }
    ck_assert_int_eq(td_event_split(buf, (size_t)n, &topic, &body, &blen), 0);
    ck_assert_int_eq(td_msg_decode(body, blen, &m, err, sizeof(err)), 0);
    if (td_obj_u64(td_msg_root(m), "id", &eid) == 0 && eid == id) {
      record(topic, td_msg_root(m));
      if (strcmp(topic, TD_TOPIC_JOB_STATE) == 0) {
        td_obj_cstr(td_msg_root(m), "state", state, sizeof(state));
        ck_assert_msg(strcmp(state, "failed") != 0, "the job failed; see %s", g_d.log);
      }
    }
    td_msg_free(m);
    nn_freemsg(buf);
  }
  ck_assert_uint_ge(g_nprog, EPOCHS); /* at least each epoch's end */
  ck_assert_uint_eq(g_neval, EPOCHS);
  ck_assert_uint_eq(g_prog[g_nprog - 1].step, EPOCHS * g_steps);
  return id;
}

static void stop(void) {
  nn_close(g_sub);
  nn_close(g_sock);
  ck_assert_int_eq(th_daemon_stop(&g_d), 0);
  th_daemon_remove(&g_d);
}

/* The progress event at step s, or NULL. */
static const progress *progress_at(uint64_t s) {
  for (size_t i = 0; i < g_nprog; i++)
    if (g_prog[i].step == s)
      return &g_prog[i];
  return NULL;
}

/* The job's one event file, read whole (the caller frees it). */
static char *read_event_file(uint64_t id, size_t *len) {
  char dir[300], path[600] = "", *text = NULL;
  struct dirent *e;
  DIR *d;
  int files = 0;

  snprintf(dir, sizeof(dir), "%s/jobs/%llu", g_d.state, (unsigned long long)id);
  ck_assert_ptr_nonnull(d = opendir(dir));
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, TD_TFEVENTS_PREFIX, strlen(TD_TFEVENTS_PREFIX)) == 0) {
      snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
      files++;
    }
  }
  closedir(d);
  ck_assert_int_eq(files, 1);
  ck_assert_int_eq(td_read_file(path, 1 << 26, &text, len), 0);
  return text;
}

START_TEST(test_curve) {
  static const char *const tags[] = {
      "train/loss",        "train/accuracy",      "train/samples_per_sec", "train/data_wait",
      "train/learning_rate", "memory/used_bytes", "memory/planned_bytes",  "test/accuracy",
      "test/loss",         "val/accuracy",        "val/loss",              "replan/micro_batch",
      "replan/accumulation", "replan/planned_bytes", "oom/requested_bytes", "oom/free_bytes",
  };
  int seen[TD_ARRAY_SIZE(tags)] = {0};
  const msgpack_object *job, *curve;
  char out[16384], err[4096], id_s[32];
  size_t len, off = 0, n, losses = 0;
  const void *rec;
  uint64_t id = run_job();
  char *text;
  td_msg *m;
  int code, rc;

  /* show: one point per progress report, exactly (fewer than 512) */
  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, err, sizeof(err)), 0);
  ck_assert_int_eq(code, 0);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &job), 0);
  ck_assert_int_eq(td_obj_array(job, "loss_curve", &curve), 0);
  ck_assert_uint_eq(curve->via.array.size, g_nprog);
  for (uint32_t i = 0; i < curve->via.array.size; i++) {
    const msgpack_object *pt = &curve->via.array.ptr[i];

    ck_assert_int_eq(pt->type, MSGPACK_OBJECT_ARRAY);
    ck_assert_uint_eq(pt->via.array.size, 2);
    ck_assert_uint_eq(pt->via.array.ptr[0].via.u64, g_prog[i].step);
    ck_assert(pt->via.array.ptr[1].via.f64 == g_prog[i].loss);
  }
  td_msg_free(m);

  /* the client: a plot in ASCII under LANG=C, the points with --json */
  setenv("LANG", "C", 1);
  unsetenv("LC_ALL");
  unsetenv("LC_CTYPE");
  snprintf(id_s, sizeof(id_s), "%llu", (unsigned long long)id);
  rc = th_client(g_d.sock, out, sizeof(out), err, sizeof(err), "show", id_s, NULL);
  ck_assert_msg(rc == 0, "show: %s", err);
  ck_assert_msg(strstr(out, "loss curve:\n") != NULL && strstr(out, " +--------") != NULL &&
                    strstr(out, " step ") != NULL,
                "%s", out);
  rc = th_client(g_d.sock, out, sizeof(out), err, sizeof(err), "--json", "show", id_s, NULL);
  ck_assert_msg(rc == 0, "--json show: %s", err);
  snprintf(err, sizeof(err), "\"loss_curve\":[[%llu,", (unsigned long long)g_prog[0].step);
  ck_assert_msg(strstr(out, err) != NULL, "%s", out);

  /* the event file: whole records, every tag, train/loss as reported */
  text = read_event_file(id, &len);
  while ((rc = td_tfevents_next_record(text, len, &off, &rec, &n)) == 0) {
    Traind__Tb__Event *ev = traind__tb__event__unpack(NULL, n, rec);

    ck_assert_ptr_nonnull(ev);
    if (off == 12 + n + 4) {
      ck_assert_str_eq(ev->file_version, "brain.Event:2");
    } else {
      ck_assert_int_eq(ev->what_case, TRAIND__TB__EVENT__WHAT_SUMMARY);
      for (size_t i = 0; i < ev->summary->n_value; i++) {
        const Traind__Tb__Summary__Value *v = ev->summary->value[i];

        for (size_t k = 0; k < TD_ARRAY_SIZE(tags); k++)
          seen[k] += strcmp(v->tag, tags[k]) == 0;
        if (strcmp(v->tag, "train/loss") == 0) {
          const progress *p = progress_at((uint64_t)ev->step);

          losses++;
          ck_assert_msg(ev->step % EVERY == 0 || ev->step % g_steps == 0,
                        "train/loss at step %lld", (long long)ev->step);
          /* the report's 6 decimals against the float TensorBoard keeps */
          if (p != NULL)
            ck_assert_msg(fabs(v->simple_value - p->loss) < 1e-5,
                          "step %lld: train/loss %g, progress %g", (long long)ev->step,
                          (double)v->simple_value, p->loss);
          /* every epoch's end is in both */
          if (ev->step % g_steps == 0)
            ck_assert_ptr_nonnull(p);
        }
      }
    }
    traind__tb__event__free_unpacked(ev, NULL);
  }
  ck_assert_int_eq(rc, TD_ENOENT);
  for (size_t k = 0; k < TD_ARRAY_SIZE(tags); k++)
    ck_assert_msg(seen[k] > 0, "no %s in the event file", tags[k]);
  ck_assert_uint_eq(losses, EPOCHS * (g_steps / EVERY) + (g_steps % EVERY != 0 ? EPOCHS : 0));
  free(text);
  stop();
}
END_TEST

/* The interpreter of the environment tests/tensorboard/setup.sh makes:
 * $TD_TENSORBOARD_VENV, else TD_BUILD_ROOT/tensorboard-venv. */
static int venv_python(char *out, size_t cap) {
  const char *venv = getenv("TD_TENSORBOARD_VENV"), *build = getenv("TD_BUILD_ROOT");

  if (venv != NULL && venv[0] != '\0')
    snprintf(out, cap, "%s/bin/python3", venv);
  else
    snprintf(out, cap, "%s/tensorboard-venv/bin/python3", build ? build : ".");
  return access(out, X_OK);
}

START_TEST(test_reader) {
  char python[512], script[512], expected[256];
  const char *src = getenv("TD_SOURCE_ROOT");
  uint64_t id = run_job();
  FILE *f;
  pid_t pid;
  int status;

  ck_assert_int_eq(venv_python(python, sizeof(python)), 0);
  snprintf(script, sizeof(script), "%s/tests/tensorboard/check_events.py", src ? src : ".");
  snprintf(expected, sizeof(expected), "%s/expected.json", g_d.dir);
  ck_assert_ptr_nonnull(f = fopen(expected, "w"));
  /* %.17g: the values as traind had them, to the last bit */
  fprintf(f, "{\"logdir\": \"%s/jobs\", \"run\": \"%llu\", \"every\": %d, \"steps\": %llu,\n"
             " \"progress\": [", g_d.state, (unsigned long long)id, EVERY,
          (unsigned long long)g_steps);
  for (size_t i = 0; i < g_nprog; i++)
    fprintf(f, "%s[%llu, %.17g, %.17g]", i ? ", " : "", (unsigned long long)g_prog[i].step,
            g_prog[i].loss, g_prog[i].acc);
  fputs("],\n \"eval\": [", f);
  for (size_t i = 0; i < g_neval; i++)
    fprintf(f, "%s[%llu, %.17g, %.17g, %.17g, %.17g]", i ? ", " : "",
            (unsigned long long)(g_eval[i].epoch * g_steps), g_eval[i].acc, g_eval[i].loss,
            g_eval[i].val_acc, g_eval[i].val_loss);
  fputs("]}\n", f);
  ck_assert_int_eq(fclose(f), 0);

  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    execl(python, python, script, expected, (char *)NULL);
    _exit(127);
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "%s found TensorBoard's reading of the event files wrong (above)", script);
  stop();
}
END_TEST

int main(int argc, char **argv) {
  bool reader = argc == 2 && strcmp(argv[1], "reader") == 0;
  char python[512];
  Suite *s;
  TCase *tc;

  /* before any of Check's objects: a skip must leave nothing unfreed */
  if (reader && venv_python(python, sizeof(python)) != 0) {
    printf("skipped: TensorBoard's reader is not installed (no %s); "
           "tests/tensorboard/setup.sh DIR makes it, TD_TENSORBOARD_VENV=DIR names it\n",
           python);
    return 77;
  }
  s = suite_create("tensorboard");
  tc = tcase_create("tensorboard");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, reader ? test_reader : test_curve);
  suite_add_tcase(s, tc);
  return th_run(s, 1);
}
