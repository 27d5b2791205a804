/* A job's model as a safetensors file: the tensors traind writes at the end
 * of a job (the worker's td_model_save) and reads as a job's initial
 * weights (the job file's `init:`), named as PyTorch's nn.Sequential names
 * its state_dict: "<layer index>.<name>" (layers.h: each type's tensors),
 * or for a layer the job file names, "<its name>.<name>" (a graph's module
 * with submodules named by its layers).
 *
 * Reading is strict, as PyTorch's load_state_dict(strict=True): the file
 * must hold exactly the model's tensors, with the same shapes; a missing
 * tensor, an extra one or another shape is an error naming the first of
 * them in file order of the model.  Floating-point tensors may be F32, F16,
 * BF16 or F64 (converted to fp32; F64 rounded to nearest); BatchNorm's
 * num_batches_tracked is an integer (I64 as PyTorch writes it, or I32).
 */
#ifndef TD_MODELFILE_H
#define TD_MODELFILE_H

#include <stddef.h>
#include <stdint.h>

#include "jobspec.h"
#include "layers.h"
#include "safetensors.h"

/* a layer's name, '.', and the longest tensor name (num_batches_tracked) */
#define TD_MF_NAME_MAX (TD_LAYER_NAME_MAX + 32)
#define TD_MF_MAX (TD_LAYER_MAX_TENSORS * TD_MAX_LAYERS)

/* One tensor of the model's file. */
typedef struct td_mf_tensor {
  char name[TD_MF_NAME_MAX]; /* "<layer name or index>.<name>" */
  int layer;                 /* its layer's index */
  td_layer_tensor t;         /* where its values live (src, at) and its shape */
  uint64_t elems;            /* product of the shape (1 for a scalar) */
} td_mf_tensor;

/* spec's tensors in file order into out (room for TD_MF_MAX), *n how many.
 * TD_EJOBSPEC (msg says why) for a spec whose shapes do not chain. */
int td_modelfile_tensors(const td_jobspec *spec, td_mf_tensor *out, size_t *n, char *msg,
                         size_t cap);

/* That f holds exactly the n tensors of want, each with its shape and a
 * dtype init takes.  TD_EDATA with "tensor '3.weight' has shape [10, 128],
 * the model's is [10, 256]" (or missing, extra, dtype) in err. */
int td_modelfile_check(const td_st_file *f, const td_mf_tensor *want, size_t n, char *err,
                       size_t errlen);

/* The values of t (checked: a float dtype) as n = elems fp32 values. */
void td_modelfile_f32(const td_st_tensor *t, float *dst, uint64_t n);
/* The value of an integer scalar t (checked: I64 or I32), at least 0. */
uint64_t td_modelfile_count(const td_st_tensor *t);

#endif
