/* A bounded YAML reader shared by the job-file and config parsers.
 *
 * td_yaml_parse turns one YAML document into a small tree using libyaml's
 * event API.  It refuses what a job or config file never needs and what
 * could make a hostile file expensive: aliases and anchors, explicit tags
 * (every tag, "!!str" included: values are typed by the schema, not the
 * file), more than one document, non-scalar keys, duplicate keys, NUL
 * characters, and anything beyond the limits below.
 *
 * td_yaml_bind walks a tree against a table of fields (td_yfield) and
 * stores each value into a struct: the table says each key's type,
 * bounds, place in the struct and whether it is required, so a parser is
 * a table plus the checks that involve several keys.
 *
 * Every message has the form "line N: key 'a.b[2].c': what is wrong".
 */
#ifndef TD_YAMLREAD_H
#define TD_YAMLREAD_H

#include <stddef.h>
#include <stdint.h>

#define TD_YAML_MAX_DEPTH  32      /* nested maps and sequences */
#define TD_YAML_MAX_NODES  100000  /* scalars, keys included, and collections */
#define TD_YAML_MAX_SCALAR 4096    /* bytes in one key or value */

typedef enum { TD_YAML_SCALAR = 0, TD_YAML_MAP, TD_YAML_SEQ } td_yaml_kind;

typedef struct td_ynode td_ynode;
struct td_ynode {
  td_yaml_kind kind;
  int line;          /* 1-based */
  int plain;         /* scalar written without quotes (so "5" is not 5) */
  char *text;        /* scalar: NUL-terminated, valid UTF-8, no inner NUL */
  size_t len;        /* scalar: bytes of text; map/seq: entries in kids */
  char *key;         /* set when this node is a map's value: its key */
  int key_line;
  td_ynode **kids;   /* map values (each with key) or sequence items */
};

/* Parse len bytes of text (NUL-termination not needed).  An empty stream
 * gives a null scalar at line 1.  On success *root owns the tree; free it
 * with td_yaml_free.  Errors: TD_EINVAL (bad or refused YAML, message in
 * err), TD_ETOOBIG (len > max_len), TD_ENOMEM. */
int td_yaml_parse(const char *text, size_t len, size_t max_len,
                  td_ynode **root, char *err, size_t errlen);
void td_yaml_free(td_ynode *root);

/* The value of key in map, or NULL (also when map is NULL or no map). */
const td_ynode *td_yaml_get(const td_ynode *map, const char *key);
/* Unquoted "", "~" or "null" (any YAML 1.1 spelling). */
int td_yaml_is_null(const td_ynode *n);

typedef enum {
  TD_YT_STR = 0, /* char[size]; null reads as "" */
  TD_YT_INT,     /* decimal integer in [min, max], stored in size bytes */
  TD_YT_U64,     /* decimal integer in [0, 2^64-1] */
  TD_YT_FLOAT,   /* finite number in lo..hi (see flags), float or double */
  TD_YT_ENUM,    /* one of names[], stored as values[i] (or i) in size bytes */
  TD_YT_SIZE,    /* td_parse_size ("2GiB"), uint64, at least min */
  TD_YT_MAP,     /* the fields in sub, stored from offset; null reads as {} */
  TD_YT_SEQ,     /* min..max items described by sub[0], stride size, from
                    offset; the count goes to the int at count_offset */
  TD_YT_NODE,    /* any value, stored nowhere: the check hook reads the node
                    (a value only the whole document can resolve) */
} td_yfield_type;

enum {
  TD_YF_REQUIRED = 1 << 0,
  TD_YF_NONEMPTY = 1 << 1, /* STR: "" is an error */
  TD_YF_LO_OPEN  = 1 << 2, /* FLOAT: lo itself is out of range */
  TD_YF_HI_OPEN  = 1 << 3, /* FLOAT: hi itself is out of range */
};

typedef struct td_yfield td_yfield;

/* Called after a value is stored at p (a SEQ item: the item; a MAP: its
 * struct, all its keys bound; a SEQ: the array, n->len items when n is a
 * sequence).  Return nonzero with a message
 * (without line or key: the walker adds them) to reject the value. */
typedef int (*td_ycheck_fn)(const td_yfield *f, void *p, const td_ynode *n,
                            void *user, char *msg, size_t cap);

/* Called for what a table does not know: a key that a MAP's table lacks
 * (f is the MAP field, text the key) or a value that is none of an ENUM's
 * names (f the ENUM, text the value).  Return nonzero with a message in
 * msg to say it instead of "did you mean" or the list of names. */
typedef int (*td_yhint_fn)(const td_yfield *f, const char *text, void *user, char *msg,
                           size_t cap);

struct td_yfield {
  const char *key;       /* NULL ends a table */
  td_yfield_type type;
  unsigned flags;
  size_t offset;         /* from the struct the enclosing table binds */
  size_t size;           /* bytes of the member; SEQ: bytes of one item */
  size_t cap;            /* SEQ: items the array holds */
  int64_t min, max;      /* INT bounds; SEQ item count; SIZE min */
  double lo, hi;         /* FLOAT bounds */
  const char *const *names; /* ENUM, NULL-terminated */
  const int *values;        /* ENUM; NULL means the index */
  const td_yfield *sub;     /* MAP: table; SEQ: the item (key unused) */
  size_t count_offset;      /* SEQ: int count, from the same struct */
  td_ycheck_fn check;
  td_yhint_fn hint;         /* MAP, ENUM: see td_yhint_fn */
  const char *shorthand;    /* MAP: a plain value v stands for {shorthand: v} */
};

#define TD_YF_OFF(st, m) .offset = offsetof(st, m), .size = sizeof(((st *)0)->m)
#define TD_YF_STR(k, st, m, fl, chk) \
  {.key = (k), .type = TD_YT_STR, .flags = (fl), TD_YF_OFF(st, m), .check = (chk)}
#define TD_YF_INT(k, st, m, lo_, hi_, fl) \
  {.key = (k), .type = TD_YT_INT, .flags = (fl), TD_YF_OFF(st, m), .min = (lo_), .max = (hi_)}
#define TD_YF_U64(k, st, m, fl) \
  {.key = (k), .type = TD_YT_U64, .flags = (fl), TD_YF_OFF(st, m)}
#define TD_YF_FLOAT(k, st, m, lo_, hi_, fl) \
  {.key = (k), .type = TD_YT_FLOAT, .flags = (fl), TD_YF_OFF(st, m), .lo = (lo_), .hi = (hi_)}
#define TD_YF_ENUM(k, st, m, nm, vals, fl) \
  {.key = (k), .type = TD_YT_ENUM, .flags = (fl), TD_YF_OFF(st, m), .names = (nm), .values = (vals)}
#define TD_YF_SIZE(k, st, m, lo_, fl) \
  {.key = (k), .type = TD_YT_SIZE, .flags = (fl), TD_YF_OFF(st, m), .min = (lo_)}
/* A section whose keys live in a member struct m of st. */
#define TD_YF_MAP(k, st, m, tbl, fl, chk) \
  {.key = (k), .type = TD_YT_MAP, .flags = (fl), TD_YF_OFF(st, m), .sub = (tbl), .check = (chk)}
/* A section whose keys live in the enclosing struct itself. */
#define TD_YF_SECTION(k, tbl, fl) \
  {.key = (k), .type = TD_YT_MAP, .flags = (fl), .sub = (tbl)}
#define TD_YF_SEQ(k, st, m, cnt, lo_, hi_, item, fl, chk) \
  {.key = (k), .type = TD_YT_SEQ, .flags = (fl), .offset = offsetof(st, m), \
   .size = sizeof(((st *)0)->m[0]), \
   .cap = sizeof(((st *)0)->m) / sizeof(((st *)0)->m[0]), \
   .min = (lo_), .max = (hi_), .sub = (item), .count_offset = offsetof(st, cnt), .check = (chk)}

/* Bind root (a map, or null for {}) to base using fields.  what names the
 * document in messages ("job file").  Returns TD_EINVAL with a message on
 * the first problem; base may then be partly written. */
int td_yaml_bind(const td_ynode *root, const td_yfield *fields, void *base,
                 void *user, const char *what, char *err, size_t errlen);

/* The field of a table with this key, or NULL. */
const td_yfield *td_yaml_field(const td_yfield *fields, const char *key);

/* td_read_file with a message: "cannot read job file 'x': No such file
 * or directory", "job file 'x' is larger than 1 MiB".  Returns its codes. */
int td_yaml_read_file(const char *path, const char *what, size_t max, char **text,
                      size_t *len, char *err, size_t errlen);

/* Write "line N: " (when line > 0) and the formatted text to err. */
void td_yaml_errf(char *err, size_t errlen, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Copy s for a message into dst: at most cap - 4 bytes of it, control
 * characters as '?', "..." where cut (cap >= 8). */
void td_yaml_excerpt(char *dst, size_t cap, const char *s);

#endif
