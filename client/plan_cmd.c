/* traind-client plan FILE [--device D]: the memory plan of a job file on
 * each device, without submitting it.  The answer to "why does my job not
 * fit": where the bytes go, per part and per layer, the largest tensors, the
 * micro-batch traind would choose, and what each remedy would save. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "error.h"
#include "jobspec.h"
#include "util.h"

static void size_str(const msgpack_object *map, const char *key, char *buf, size_t cap) {
  uint64_t v;

  if (td_obj_u64(map, key, &v) == 0)
    td_format_size(v, buf, cap);
  else
    snprintf(buf, cap, "?");
}

static uint64_t u64_or(const msgpack_object *map, const char *key, uint64_t dflt) {
  uint64_t v;

  return td_obj_u64(map, key, &v) == 0 ? v : dflt;
}

static int print_devices(const msgpack_object *root) {
  static const char *const cols[] = {"DEVICE", "BUDGET", "FREE NOW", "FITS",
                                     "MICRO-BATCH", "ACCUM", "PLAN"};
  const msgpack_object *devs;
  cli_table t;
  int rc;

  if (td_obj_array(root, "devices", &devs) != 0)
    return cli_malformed("plan", "devices");
  cli_table_init(&t, cols, TD_ARRAY_SIZE(cols), "lrrlrrr");
  for (uint32_t i = 0; i < devs->via.array.size; i++) {
    const msgpack_object *d = &devs->via.array.ptr[i], *plan;
    char *name = cli_field_dup(d, "name");
    char budget[32], free_now[32], total[32] = "?";
    int fits = 0, fits_now = 0;

    td_obj_bool(d, "fits", &fits);
    td_obj_bool(d, "fits_now", &fits_now);
    size_str(d, "budget", budget, sizeof(budget));
    size_str(d, "free", free_now, sizeof(free_now));
    if (td_obj_map(d, "plan", &plan) == 0)
      size_str(plan, "total", total, sizeof(total));
    cli_table_cell(&t, "%s", name ? name : "?");
    cli_table_cell(&t, "%s", budget);
    cli_table_cell(&t, "%s", free_now);
    cli_table_cell(&t, "%s", !fits ? "no" : fits_now ? "yes, now" : "yes, when free");
    if (fits) {
      cli_table_cell(&t, "%" PRIu64, u64_or(d, "micro_batch", 0));
      cli_table_cell(&t, "%" PRIu64, u64_or(d, "accumulation", 0));
    } else {
      cli_table_cell(&t, "-");
      cli_table_cell(&t, "-");
    }
    cli_table_cell(&t, "%s%s", total, fits ? "" : " (smallest)");
    free(name);
  }
  rc = cli_table_print(&t, stdout);
  cli_table_free(&t);
  return rc;
}

static int print_layers(const msgpack_object *root) {
  static const char *const cols[] = {"LAYER", "TYPE", "SHAPE", "PARAMS", "ACTIVATIONS"};
  const msgpack_object *layers;
  cli_table t;
  int rc;

  if (td_obj_array(root, "layers", &layers) != 0)
    return cli_malformed("plan", "layers");
  cli_table_init(&t, cols, TD_ARRAY_SIZE(cols), "rllrr");
  for (uint32_t i = 0; i < layers->via.array.size; i++) {
    const msgpack_object *l = &layers->via.array.ptr[i];
    char *type = cli_field_dup(l, "type");
    char params[32], act[32];

    size_str(l, "params", params, sizeof(params));
    size_str(l, "activations", act, sizeof(act));
    cli_table_cell(&t, "%" PRIu64, u64_or(l, "index", 0));
    cli_table_cell(&t, "%s", type ? type : "?");
    char *in = cli_field_dup(l, "in"), *out = cli_field_dup(l, "out");
    char *storage = cli_field_dup(l, "storage");

    cli_table_cell(&t, "%s -> %s", in ? in : "?", out ? out : "?");
    cli_table_cell(&t, "%s", u64_or(l, "params", 0) ? params : "-");
    cli_table_cell(&t, "%s", u64_or(l, "activations", 0) ? act : storage ? storage : "-");
    free(storage);
    free(out);
    free(in);
    free(type);
  }
  rc = cli_table_print(&t, stdout);
  cli_table_free(&t);
  return rc;
}

/* One entry of the daemon's "savings" list. */
static void print_saving(const msgpack_object *e) {
  char bytes[32];
  int costs = u64_or(e, "costs", 0) > 0;

  size_str(e, costs ? "costs" : "saves", bytes, sizeof(bytes));
  fputs("  ", stdout);
  cli_put_field(stdout, e, "remedy", "?");
  printf(": %s %s (", costs ? "costs" : "saves", bytes);
  cli_put_field(stdout, e, "note", "");
  fputs(")\n", stdout);
}

static void print_list(const msgpack_object *root, const char *key, const char *title) {
  const msgpack_object *arr;

  if (td_obj_array(root, key, &arr) != 0)
    return;
  printf("\n%s\n", title);
  for (uint32_t i = 0; i < arr->via.array.size; i++) {
    const msgpack_object *e = &arr->via.array.ptr[i];
    char bytes[32];

    if (strcmp(key, "largest") == 0) {
      char *name = cli_field_dup(e, "name");

      size_str(e, "bytes", bytes, sizeof(bytes));
      printf("  %-28s %10s\n", name ? name : "?", bytes);
      free(name);
    } else {
      print_saving(e);
    }
  }
}

static void print_plan(const msgpack_object *root) {
  const msgpack_object *plan;
  int recompute = 0, batch_dependent = 0;

  td_obj_bool(root, "recompute", &recompute);
  td_obj_bool(root, "batch_dependent", &batch_dependent);
  fputs("job ", stdout);
  cli_put_field(stdout, root, "name", "?");
  printf(": batch %" PRIu64 ", smallest micro-batch %" PRIu64 "\nprecision ",
         u64_or(root, "batch_size", 0), u64_or(root, "min_micro_batch", 0));
  cli_put_field(stdout, root, "precision", "?");
  printf("%s\n", recompute ? ", activations recomputed in the backward pass" : "");
  if (td_obj_map(root, "plan", &plan) == 0) {
    char total[32];

    fputs("\nmemory at the whole batch\n", stdout);
    cli_print_plan_table(stdout, plan, "  ");
    size_str(plan, "total", total, sizeof(total));
    printf("  total        %s\n", total);
  }
  fputs("\nper layer (activations stored at the whole batch)\n", stdout);
  print_layers(root);
  fputs("\non each device\n", stdout);
  print_devices(root);
  if (batch_dependent)
    fputs("\nnote: the model has batchnorm2d, which normalises each micro-batch with its own\n"
          "statistics: a batch split into micro-batches trains differently from the whole\n"
          "batch (set memory.min_micro_batch to the batch size to forbid splitting)\n",
          stdout);
  print_list(root, "largest", "largest tensors");
  print_list(root, "savings", "what each remedy would save");
}

int cli_cmd_plan(cli *c, const cli_args *a) {
  const char *path = a->pos[0];
  const char *slash = strrchr(path, '/');
  char *text = NULL, *dir = NULL, *abs = NULL;
  const char *dtype;
  td_msg *reply = NULL;
  size_t len;
  td_pack p;
  int rc;

  rc = td_read_file(path, TD_JOBFILE_MAX, &text, &len);
  if (rc < 0) {
    cli_fail("cannot read job file '%s': %s", path,
             rc == TD_ENOENT ? "no such file" : td_strerror(rc));
    return CLI_EXIT_USAGE;
  }
  /* Relative paths in the job resolve beside the file, as for submit. */
  dir = slash == NULL ? strdup(".") : slash == path ? strdup("/")
                                                    : strndup(path, (size_t)(slash - path));
  abs = dir != NULL ? realpath(dir, NULL) : NULL;
  if (abs == NULL) {
    cli_fail("cannot resolve the directory of job file '%s': %s", path, strerror(errno));
    rc = CLI_EXIT_USAGE;
    goto free_all;
  }
  if ((rc = cli_check_job(text, len, abs, 0, &dtype)) != 0)
    goto free_all;
  td_pack_init(&p);
  td_pack_request(&p, "plan", 3 + (a->device != NULL));
  td_pack_str(&p, "job");
  td_pack_strn(&p, text, len);
  td_pack_kv_str(&p, "base_dir", abs);
  td_pack_kv_str(&p, "sample_dtype", dtype);
  if (a->device != NULL)
    td_pack_kv_str(&p, "device", a->device);
  rc = cli_call(c, &p, &reply, NULL);
  td_pack_free(&p);
  if (rc != 0)
    goto free_all;
  if (c->json)
    cli_json_print_reply(stdout, td_msg_root(reply));
  else
    print_plan(td_msg_root(reply));
  td_msg_free(reply);
free_all:
  free(abs);
  free(dir);
  free(text);
  return rc;
}
