/* Embedding, positional embedding and the core of multi-head self-attention
 * on the CUDA backend (seq.cu). */
#ifndef TD_CUDA_SEQ_CUH
#define TD_CUDA_SEQ_CUH

#include "backend_cuda.cuh"

void td__cuda_embedding_fwd(td_backend *be, const float *ids, const float *w, float *y,
                            size_t rows, size_t vocab, size_t dim);
void td__cuda_embedding_bwd(td_backend *be, const float *ids, const float *dy, float *dw,
                            size_t rows, size_t vocab, size_t dim, float beta);
void td__cuda_add_rows(td_backend *be, const float *x, const float *b, float *y, size_t rows,
                       size_t cols);
void td__cuda_attn_fwd(td_backend *be, const td_attention_desc *a, const float *qkv, float *p,
                       float *o);
void td__cuda_attn_bwd(td_backend *be, const td_attention_desc *a, const float *qkv,
                       const float *p, const float *dout, float *dqkv, float *dp);

#endif
