/* dense.c's dw lane function, included once per vector width with
 * DW_NAME (the function), DW_ATTR (its target), DW_VEC (the vector type),
 * DW_NVEC (vectors in 16 floats) and DW_NW (rows of dw a tile) defined. */

/* One DW_NW x 16 tile of dw from the packed strips, rows [0, rn) of them:
 * each block's chain over its rows, then onto dw in block order (beta dw
 * first, before the call's first block).  Only the tile's first nro rows
 * and cols columns are real. */
static inline TILE_INLINE void DW_CAT(DW_NAME, _tile)(const dw_args *a,
                                                      const float *restrict xp,
                                                      const float *restrict dp, int rn, int o,
                                                      int nro, int i, int cols,
                                                      bool first_chunk) {
  enum { W = 16 / DW_NVEC };

  for (int r0 = 0; r0 < rn; r0 += TD_BLOCK_ROWS) {
    int r1 = rn - r0 < TD_BLOCK_ROWS ? rn : r0 + TD_BLOCK_ROWS;
    bool first = r0 == 0 && first_chunk;
    DW_VEC s[DW_NW][DW_NVEC], t;

    _Pragma("GCC unroll 8") for (int j = 0; j < DW_NW; j++)
      _Pragma("GCC unroll 2") for (int h = 0; h < DW_NVEC; h++) s[j][h] = (DW_VEC){0};
    for (int r = r0; r < r1; r++) {
      const float *d = dp + (size_t)r * DW_NW;
      DW_VEC x[DW_NVEC];

      _Pragma("GCC unroll 2") for (int h = 0; h < DW_NVEC; h++)
        memcpy(&x[h], xp + (size_t)r * 16 + h * W, sizeof(DW_VEC));
      _Pragma("GCC unroll 8") for (int j = 0; j < DW_NW; j++)
        _Pragma("GCC unroll 2") for (int h = 0; h < DW_NVEC; h++) s[j][h] += d[j] * x[h];
    }
    if (nro == DW_NW && cols == 16) { /* the common case, with s kept in registers */
      _Pragma("GCC unroll 8") for (int j = 0; j < DW_NW; j++) {
        float *p = a->dw + (size_t)(o + j) * a->in + i;

        _Pragma("GCC unroll 2") for (int h = 0; h < DW_NVEC; h++) {
          memcpy(&t, p + h * W, sizeof(t));
          if (first && a->beta != 1.0f)
            t = a->beta == 0.0f ? (DW_VEC){0} : a->beta * t;
          t += s[j][h];
          memcpy(p + h * W, &t, sizeof(t));
        }
      }
      continue;
    }
    for (int j = 0; j < nro; j++) {
      float *p = a->dw + (size_t)(o + j) * a->in + i;
      float u[16];

      if (cols == 16) {
        for (int h = 0; h < DW_NVEC; h++) {
          memcpy(&t, p + h * W, sizeof(t));
          if (first && a->beta != 1.0f)
            t = a->beta == 0.0f ? (DW_VEC){0} : a->beta * t;
          t += s[j][h];
          memcpy(p + h * W, &t, sizeof(t));
        }
        continue;
      }
      for (int h = 0; h < DW_NVEC; h++)
        memcpy(u + h * W, &s[j][h], sizeof(DW_VEC));
      for (int q = 0; q < cols; q++)
        p[q] = (!first || a->beta == 1.0f ? p[q] : a->beta == 0.0f ? 0.0f : a->beta * p[q]) +
               u[q];
    }
  }
}

/* A task is DW_ROWS_TASK rows by DW_COLS_TASK columns of dw, DW_RC rows of
 * x and dy at a time. */
DW_ATTR static void DW_NAME(void *arg, int lane) {
  const dw_args *a = arg;
  float xp[DW_RC * DW_COLS_TASK] __attribute__((aligned(64)));
  float dp[DW_RC * DW_ROWS_TASK] __attribute__((aligned(64)));

  for (int t = a->tasks * lane / a->lanes; t < a->tasks * (lane + 1) / a->lanes; t++) {
    int o0 = t / a->col_tasks * DW_ROWS_TASK, i0 = t % a->col_tasks * DW_COLS_TASK;
    int o1 = a->out - o0 < DW_ROWS_TASK ? a->out : o0 + DW_ROWS_TASK;
    int i1 = a->in - i0 < DW_COLS_TASK ? a->in : i0 + DW_COLS_TASK;

    for (int r0 = 0; r0 < a->n; r0 += DW_RC) {
      int rn = a->n - r0 < DW_RC ? a->n - r0 : DW_RC;

      dw_pack(a, xp, dp, DW_NW, r0, rn, o0, o1, i0, i1);
      for (int i = i0; i < i1; i += 16) {
        for (int o = o0; o < o1; o += DW_NW)
          DW_CAT(DW_NAME, _tile)(a, xp + (size_t)(i - i0) / 16 * DW_RC * 16,
                                 dp + (size_t)(o - o0) / DW_NW * DW_RC * DW_NW, rn, o,
                                 o1 - o < DW_NW ? o1 - o : DW_NW, i,
                                 i1 - i < 16 ? i1 - i : 16, r0 == 0);
      }
    }
  }
}

#undef DW_NAME
#undef DW_ATTR
#undef DW_VEC
#undef DW_NVEC
#undef DW_NW
