/* Shared by the hostile-input tests and the fuzz targets: what a refusal's
 * message must be, and the error code a hostile corpus file names. */
#ifndef TD_TEST_HOSTILE_H
#define TD_TEST_HOSTILE_H

#include <string.h>

#include "error.h"

/* One line of valid UTF-8 without control characters: a message a client
 * can print, or put in JSON, as it is. */
static inline int th_printable_line(const char *s) {
  const unsigned char *p = (const unsigned char *)s;

  while (*p) {
    int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2
                                                  : (*p & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0 || (n == 0 && *p < 0x20) || *p == 0x7f || (n == 1 && *p < 0xC2))
      return 0;
    p++;
    for (int i = 0; i < n; i++, p++)
      if ((*p & 0xC0) != 0x80)
        return 0;
  }
  return 1;
}

/* The code in a corpus file's name, WHAT.CODE.EXT; 0 if it names none. */
static inline int th_hostile_code(const char *name) {
  const char *ext = strrchr(name, '.'), *dot = ext;
  char code[32];

  while (dot != NULL && dot > name && *--dot != '.')
    ;
  if (ext == NULL || dot == NULL || *dot != '.' || ext - dot - 1 >= (long)sizeof(code))
    return 0;
  memcpy(code, dot + 1, (size_t)(ext - dot - 1));
  code[ext - dot - 1] = '\0';
  if (td_err_from_name(code) == TD_EINTERNAL && strcmp(code, "EINTERNAL") != 0)
    return 0;
  return td_err_from_name(code);
}

#endif
