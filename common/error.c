#include "error.h"

#include <string.h>

static const struct {
  int code;
  const char *name;
  const char *msg;
} td__errs[] = {
#define TD__ROW(name, msg) {TD_##name, #name, msg},
    TD_ERRNO_MAP(TD__ROW)
#undef TD__ROW
};

#define TD__NERRS (sizeof(td__errs) / sizeof(td__errs[0]))

const char *td_err_name(int err) {
  for (size_t i = 0; i < TD__NERRS; i++)
    if (td__errs[i].code == err)
      return td__errs[i].name;
  return err == 0 ? "OK" : "EUNKNOWN";
}

const char *td_strerror(int err) {
  for (size_t i = 0; i < TD__NERRS; i++)
    if (td__errs[i].code == err)
      return td__errs[i].msg;
  return err == 0 ? "success" : "unknown error";
}

int td_err_from_name(const char *name) {
  for (size_t i = 0; i < TD__NERRS; i++)
    if (strcmp(td__errs[i].name, name) == 0)
      return td__errs[i].code;
  return TD_EINTERNAL;
}
