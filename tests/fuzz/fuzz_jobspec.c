/* libFuzzer target for the job-file parser (td_jobspec_parse, and through
 * it the bounded YAML reader).  Besides "never crash", it checks what the
 * header promises: a refusal has a code and a one-line printable UTF-8
 * message and leaves the output alone; an accepted spec is within its
 * bounds, with NUL-terminated strings and absolute paths; and parsing the
 * same bytes twice gives the same answer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hostile.h"
#include "jobspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int terminated(const char *s, size_t cap) {
  return memchr(s, '\0', cap) != NULL;
}

static int absolute_or_empty(const char *path) {
  return path[0] == '\0' || path[0] == '/';
}

static void check_spec(const td_jobspec *s, int with_base) {
  if (!terminated(s->name, sizeof(s->name)) || !terminated(s->device, sizeof(s->device)) ||
      !terminated(s->output, sizeof(s->output)) ||
      !terminated(s->train.images, sizeof(s->train.images)) ||
      !terminated(s->train.labels, sizeof(s->train.labels)) ||
      !terminated(s->test.images, sizeof(s->test.images)) ||
      !terminated(s->test.labels, sizeof(s->test.labels)))
    abort();
  if (s->name[0] == '\0' || s->input_rank < 1 || s->input_rank > TD_MAX_RANK ||
      s->nlayers < 1 || s->nlayers > TD_MAX_LAYERS)
    abort();
  for (int i = 0; i < s->input_rank; i++)
    if (s->input_dims[i] == 0)
      abort();
  for (int i = 0; i < s->nlayers; i++)
    if ((unsigned)s->layers[i].type >= TD_LAYER__COUNT)
      abort();
  if (s->batch_size == 0 || s->epochs == 0 || s->min_micro_batch == 0 ||
      s->min_micro_batch > s->batch_size)
    abort();
  if (!(s->opt.lr > 0) || (unsigned)s->precision >= TD_PREC__COUNT)
    abort();
  /* With a base directory every path given is absolute. */
  if (with_base && (!absolute_or_empty(s->train.images) || !absolute_or_empty(s->train.labels) ||
                    !absolute_or_empty(s->test.images) || !absolute_or_empty(s->test.labels) ||
                    !absolute_or_empty(s->output)))
    abort();
}

static int parse(const uint8_t *data, size_t size, const char *base, td_jobspec *out,
                 char *err, size_t errlen) {
  memset(out, 0xA5, sizeof(*out));
  memset(err, 0, errlen);
  return td_jobspec_parse((const char *)data, size, base, out, err, errlen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static td_jobspec a, b, untouched;
  static char ea[512], eb[512];
  static const char *const bases[] = {"/base/dir", NULL};

  memset(&untouched, 0xA5, sizeof(untouched));
  for (size_t k = 0; k < sizeof(bases) / sizeof(bases[0]); k++) {
    int ra = parse(data, size, bases[k], &a, ea, sizeof(ea));
    int rb = parse(data, size, bases[k], &b, eb, sizeof(eb));

    if (ra != rb || strcmp(ea, eb) != 0)
      abort();
    if (ra == 0) {
      if (memcmp(&a, &b, sizeof(a)) != 0)
        abort();
      check_spec(&a, bases[k] != NULL);
    } else {
      if (ra != TD_EJOBSPEC && ra != TD_ETOOBIG && ra != TD_ENOMEM)
        abort();
      if (ea[0] == '\0' || !th_printable_line(ea))
        abort();
      /* Output written only on success. */
      if (memcmp(&a, &untouched, sizeof(a)) != 0)
        abort();
    }
  }
  /* A tiny error buffer is filled, never overrun (ASan sees the rest). */
  {
    char *tiny = malloc(8);
    if (tiny != NULL) {
      td_jobspec_parse((const char *)data, size, "/b", &a, tiny, 8);
      free(tiny);
    }
  }
  return 0;
}
