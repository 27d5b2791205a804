/* Writes the seed corpora for fuzz_imsg and fuzz_jobdesc, packed with the
 * codecs themselves: one stream of frames per worker report kind and per
 * traind command, and the description of each example job.
 *   gen_imsg_corpus tests/fuzz/corpus/imsg tests/fuzz/corpus/jobdesc EXAMPLES_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "imsg.h"
#include "jobdesc.h"
#include "util.h"

static int write_seed(const char *dir, const char *name, const void *data, size_t len) {
  char path[1024];
  FILE *f;

  snprintf(path, sizeof path, "%s/%s", dir, name);
  f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    fprintf(stderr, "gen_imsg_corpus: cannot write %s\n", path);
    return 1;
  }
  return 0;
}

/* A message of def with every field at a legal value, after the byte that
 * tells fuzz_imsg which side reads first. */
static int imsg_seed(const char *dir, td_imsg_dir side, const td_msgdef *def) {
  unsigned char buf[1 + TD_IMSG_HDR + TD_IMSG_MAX];
  const void *frame;
  size_t len;
  td_imsg b;
  int rc;

  td_imsg_begin(&b, side, def->op);
  for (size_t i = 0; i < def->nfields; i++) {
    const td_field *f = &def->fields[i];

    switch (f->type) {
    case TD_FT_UINT: td_imsg_u64(&b, f->name, (uint64_t)f->min + 1 <= f->max ? (uint64_t)f->min + 1
                                                                              : (uint64_t)f->min);
      break;
    case TD_FT_FLOAT: td_imsg_f64(&b, f->name, f->min > 0 ? f->min : 0.5 < f->max ? 0.5 : 0);
      break;
    case TD_FT_BOOL: td_imsg_bool(&b, f->name, 1); break;
    default:
      td_imsg_str(&b, f->name, strcmp(f->name, "precision") == 0 ? "bf16"
                                 : strcmp(f->name, "code") == 0  ? "EOOM"
                                                                 : "out of memory");
      break;
    }
  }
  if ((rc = td_imsg_end(&b, &frame, &len)) != 0) {
    fprintf(stderr, "gen_imsg_corpus: %s: %s\n", def->op, b.p.why);
    td_imsg_free(&b);
    return 1;
  }
  buf[0] = side == TD_IMSG_CONTROL;
  memcpy(buf + 1, frame, len);
  rc = write_seed(dir, def->op, buf, len + 1);
  td_imsg_free(&b);
  return rc;
}

int main(int argc, char **argv) {
  static const char *const examples[] = {"fashion-mnist-mlp", "fashion-mnist-cnn",
                                         "fashion-mnist-cnn-bf16"};
  int fail = 0;

  if (argc != 4) {
    fprintf(stderr, "usage: gen_imsg_corpus IMSG_DIR JOBDESC_DIR EXAMPLES_DIR\n");
    return 2;
  }
  for (int side = 0; side < TD_IMSG__DIRS; side++) {
    size_t n;
    const td_msgdef *defs = td_imsg_defs((td_imsg_dir)side, &n);

    for (size_t i = 0; i < n; i++)
      fail |= imsg_seed(argv[1], (td_imsg_dir)side, &defs[i]);
  }
  {
    /* a worker's run as traind reads it: plan, progress, eval, done */
    static const char *const run[] = {"plan", "heartbeat", "progress", "eval", "done"};
    unsigned char stream[1 + 5 * 4096] = {0};
    size_t n = 1, nd;
    const td_msgdef *defs = td_imsg_defs(TD_IMSG_REPORT, &nd);

    for (size_t k = 0; k < sizeof(run) / sizeof(run[0]); k++) {
      char path[1024];
      unsigned char *one;
      size_t len;

      for (size_t i = 0; i < nd; i++)
        if (strcmp(defs[i].op, run[k]) == 0)
          fail |= imsg_seed(argv[1], TD_IMSG_REPORT, &defs[i]);
      snprintf(path, sizeof path, "%s/%s", argv[1], run[k]);
      if (td_read_file(path, 4097, (char **)&one, &len) == 0) {
        memcpy(stream + n, one + 1, len - 1);
        n += len - 1;
        free(one);
      }
    }
    fail |= write_seed(argv[1], "stream", stream, n);
  }
  for (size_t i = 0; i < sizeof(examples) / sizeof(examples[0]); i++) {
    char path[1024], out[1024], err[512];
    td_jobspec spec;

    snprintf(path, sizeof path, "%s/%s.yaml", argv[3], examples[i]);
    snprintf(out, sizeof out, "%s/%s", argv[2], examples[i]);
    if (td_jobspec_load(path, &spec, err, sizeof err) < 0 ||
        td_jobdesc_save(out, &spec, err, sizeof err) < 0) {
      fprintf(stderr, "gen_imsg_corpus: %s\n", err);
      fail = 1;
    }
  }
  return fail;
}
