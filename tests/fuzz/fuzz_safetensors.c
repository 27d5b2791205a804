/* libFuzzer target for the safetensors reader (td_safetensors_parse and
 * its accessors).  Besides "never crash", it checks what the header
 * promises of a file it accepts: each tensor's bytes are its shape times
 * its dtype's size and lie inside the file (read to the last byte, so ASan
 * sees them), names are distinct and found by td_safetensors_find, and
 * parsing the same bytes twice gives the same tensors.  A refusal is
 * TD_EDATA or TD_ENOMEM with a message.  An accepted file is also checked
 * as a job's init: model (common/modelfile.c) of a small model, and read as
 * fp32 where it matches. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "modelfile.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The format's element sizes, written out here rather than taken from the
 * reader, so that the check does not share the reader's mistakes. */
static const struct {
  const char *name;
  uint64_t size;
} sizes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
    {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
    {"U16", 2}, {"U8", 1},  {"BOOL", 1},
};

static uint64_t dtype_size(const char *dtype) {
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
    if (strcmp(sizes[i].name, dtype) == 0)
      return sizes[i].size;
  abort(); /* an accepted tensor has a known dtype */
}

static void check_tensor(const td_st_file *f, size_t i, const td_st_tensor *t) {
  td_st_tensor again;
  uint64_t n = dtype_size(t->dtype);
  volatile uint8_t sink = 0;

  if (t->name == NULL || t->rank > TD_ST_MAX_RANK)
    abort();
  for (uint32_t d = 0; d < t->rank; d++) {
    if (t->shape[d] != 0 && n > UINT64_MAX / t->shape[d])
      abort(); /* accepted although its size overflows */
    n *= t->shape[d];
  }
  if (n != t->bytes)
    abort();
  if (t->bytes > 0)
    sink = ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->bytes - 1];
  (void)sink;
  /* Names are distinct: find gives this one. */
  if (td_safetensors_find(f, t->name, &again) != 0 || again.data != t->data ||
      again.bytes != t->bytes)
    abort();
  (void)i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256], err2[256];
  td_st_file *f, *g;
  int rc, rc2;

  memset(err, 0, sizeof(err));
  rc = td_safetensors_parse(data, size, &f, err, sizeof(err));
  rc2 = td_safetensors_parse(data, size, &g, err2, sizeof(err2));
  if (rc != rc2)
    abort();
  if (rc < 0) {
    if ((rc != TD_EDATA && rc != TD_ENOMEM) || err[0] == '\0' || strcmp(err, err2) != 0)
      abort();
    return 0;
  }
  if (td_safetensors_count(f) != td_safetensors_count(g))
    abort();
  for (size_t i = 0; i < td_safetensors_count(f); i++) {
    td_st_tensor a, b;
    td_safetensors_get(f, i, &a);
    td_safetensors_get(g, i, &b);
    check_tensor(f, i, &a);
    if (strcmp(a.name, b.name) != 0 || strcmp(a.dtype, b.dtype) != 0 || a.bytes != b.bytes ||
        a.rank != b.rank || (a.bytes > 0 && memcmp(a.data, b.data, a.bytes) != 0))
      abort();
  }
  /* Lookups of what a reader asks for. */
  {
    static const char *const keys[] = {"format", "version", "crc32", "job", "step", ""};
    td_st_tensor t;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
      const char *v = td_safetensors_meta(f, keys[i]);
      if (v != NULL)
        (void)strlen(v);
      if (td_safetensors_find(f, keys[i], &t) == 0 && strcmp(t.name, keys[i]) != 0)
        abort();
    }
  }
  /* as the init: file of [4] -> dense 3 -> layernorm -> dense 2 */
  {
    static td_mf_tensor want[TD_MF_MAX];
    static size_t nwant;
    static float vals[64];
    td_jobspec *spec;

    if (nwant == 0 && (spec = calloc(1, sizeof(*spec))) != NULL) {
      spec->input_rank = 1;
      spec->input_dims[0] = 4;
      spec->layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = 3};
      spec->layers[1] = (td_layer){.type = TD_LAYER_LAYERNORM, .eps = 1e-5f};
      spec->layers[2] = (td_layer){.type = TD_LAYER_DENSE, .units = 2};
      spec->nlayers = 3;
      if (td_modelfile_tensors(spec, want, &nwant, err, sizeof(err)) != 0)
        abort();
      free(spec);
    }
    err[0] = '\0';
    rc = td_modelfile_check(f, want, nwant, err, sizeof(err));
    if ((rc != 0 && (rc != TD_EDATA || err[0] == '\0')))
      abort();
    for (size_t i = 0; rc == 0 && i < nwant; i++) {
      td_st_tensor t;

      if (td_safetensors_find(f, want[i].name, &t) != 0 || want[i].elems > 64)
        abort();
      td_modelfile_f32(&t, vals, want[i].elems);
    }
  }
  td_safetensors_free(f);
  td_safetensors_free(g);
  return 0;
}
