/* The job table, durable in SQLite: WAL with synchronous=FULL, so a commit
 * that returned has reached the disk and survives SIGKILL or power loss.
 * Operators read it with `sqlite3 STATE_DIR/jobs.db`. */
#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "db.h"
#include "error.h"
#include "log.h"
#include "metrics.h"
#include "traind.h"
#include "util.h"


struct td_db {
  sqlite3 *h;
  sqlite3_stmt *insert, *find_key, *update, *history;
  char path[TD_PATH_MAX];
};

/* Schema migrations, oldest first: migration i takes a database from
 * user_version i to i+1.  A released migration is never edited; a change
 * is a new entry. */
static const char *const td__migrations[] = {
    "CREATE TABLE jobs ("
    "  id INTEGER PRIMARY KEY,"
    "  key TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  priority INTEGER NOT NULL,"
    "  device TEXT NOT NULL DEFAULT '',"
    "  job_yaml TEXT NOT NULL,"
    "  base_dir TEXT NOT NULL,"
    "  submitted_ms INTEGER NOT NULL,"
    "  started_ms INTEGER NOT NULL DEFAULT 0,"
    "  finished_ms INTEGER NOT NULL DEFAULT 0,"
    "  epoch INTEGER NOT NULL DEFAULT 0,"
    "  epochs INTEGER NOT NULL DEFAULT 0,"
    "  step INTEGER NOT NULL DEFAULT 0,"
    "  steps INTEGER NOT NULL DEFAULT 0,"
    "  loss REAL NOT NULL DEFAULT 0,"
    "  accuracy REAL NOT NULL DEFAULT -1,"
    "  samples_per_sec REAL NOT NULL DEFAULT 0,"
    "  model TEXT NOT NULL DEFAULT '',"
    "  error TEXT NOT NULL DEFAULT '',"
    "  exit_status INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE job_history ("
    "  job_id INTEGER NOT NULL REFERENCES jobs(id),"
    "  at_ms INTEGER NOT NULL,"
    "  state TEXT NOT NULL,"
    "  detail TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX job_history_job ON job_history(job_id);",

    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;",

    /* Who submitted it, as MUNGE said (-1: a job from before identities),
     * and the dataset's stored type as probed with the submitter's rights,
     * so traind never opens the dataset itself. */
    "ALTER TABLE jobs ADD COLUMN uid INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE jobs ADD COLUMN gid INTEGER NOT NULL DEFAULT -1;"
    "ALTER TABLE jobs ADD COLUMN sample_dtype INTEGER NOT NULL DEFAULT -1;",

    /* Fair share: each user's device byte-seconds, decayed to at_ms, so a
     * restart keeps who has used the devices lately. */
    "CREATE TABLE user_usage ("
    "  uid INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL DEFAULT '',"
    "  usage REAL NOT NULL DEFAULT 0,"
    "  at_ms INTEGER NOT NULL DEFAULT 0);",

    /* A job that succeeded with something to say (its model kept in the
     * job's directory), and the admins' device changes, which a restart
     * or a reload must not drop without a word. */
    "ALTER TABLE jobs ADD COLUMN warning TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE device_overrides ("
    "  name TEXT PRIMARY KEY,"
    "  budget INTEGER NOT NULL DEFAULT 0,"
    "  drain INTEGER NOT NULL DEFAULT 0,"
    "  at_ms INTEGER NOT NULL DEFAULT 0);",

    /* The job as it runs: its description (proto/jobdesc.h), binary and
     * versioned, made once at submit.  job_yaml stays what the user
     * wrote, for `show`.  A row from before gets its description from its
     * YAML when traind first loads it (daemon/main.c). */
    "ALTER TABLE jobs ADD COLUMN job_desc BLOB;",
};

#define TD_DB_SCHEMA_VERSION ((int)(sizeof(td__migrations) / sizeof(td__migrations[0])))

/* Less than this free on the database's file system, or under its file
 * size limit, counts as full. */
#define TD_DB_ROOM_MIN (1u << 20)

static int td__file_near_limit(const char *path, rlim_t limit) {
  struct stat st;

  return stat(path, &st) == 0 && (uint64_t)st.st_size + TD_DB_ROOM_MIN >= (uint64_t)limit;
}

/* SQLite keeps the errno of a failed write or fsync only sometimes (its
 * WAL writes lose it), so look for room ourselves: free blocks on the
 * database's file system, and traind's file size limit (RLIMIT_FSIZE,
 * systemd's LimitFSIZE=) against the database and its WAL. */
static int td__db_no_room(const td_db *db) {
  char dir[TD_PATH_MAX], wal[TD_PATH_MAX + 8];
  struct statvfs sv;
  struct rlimit rl;
  char *slash;

  if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    snprintf(wal, sizeof(wal), "%s-wal", db->path);
    if (td__file_near_limit(db->path, rl.rlim_cur) || td__file_near_limit(wal, rl.rlim_cur))
      return 1;
  }
  td_strlcpy(dir, db->path, sizeof(dir));
  slash = strrchr(dir, '/');
  if (slash == NULL)
    td_strlcpy(dir, ".", sizeof(dir));
  else if (slash == dir)
    dir[1] = '\0';
  else
    *slash = '\0';
  if (statvfs(dir, &sv) != 0)
    return 0;
  return (uint64_t)(geteuid() == 0 ? sv.f_bfree : sv.f_bavail) * sv.f_frsize < TD_DB_ROOM_MIN ||
         (sv.f_files > 0 && (geteuid() == 0 ? sv.f_ffree : sv.f_favail) == 0);
}

/* A full disk (ENOSPC, SQLITE_FULL), a quota (EDQUOT) and traind's file
 * size limit (EFBIG) all mean "make room", not "the database is bad". */
static int td__db_full(td_db *db, int rc) {
  int e = sqlite3_system_errno(db->h);

  if ((rc & 0xff) == SQLITE_FULL)
    return 1;
  if ((rc & 0xff) != SQLITE_IOERR)
    return 0;
  return e == ENOSPC || e == EFBIG || e == EDQUOT || td__db_no_room(db);
}

static int td__db_err(td_db *db, int rc, const char *what) {
  if (td__db_full(db, rc)) {
    td_error("job database %s: %s: no room to write (%s, SQLite code %d): free space on its "
             "disk or raise traind's file size limit", db->path, what, sqlite3_errmsg(db->h),
             sqlite3_extended_errcode(db->h));
    return TD_ENOSPC;
  }
  td_error("job database %s: %s: %s", db->path, what, sqlite3_errmsg(db->h));
  return TD_EDB;
}

static int td__exec(td_db *db, const char *sql) {
  double t0 = td_now_mono();
  int rc = sqlite3_exec(db->h, sql, NULL, NULL, NULL);

  if (strcmp(sql, "COMMIT") == 0)
    td_metrics_db_commit(td_now_mono() - t0);
  return rc == SQLITE_OK ? 0 : td__db_err(db, rc, sql);
}

static int td__integrity_ok(sqlite3 *h, char *detail, size_t cap) {
  sqlite3_stmt *st;
  int ok = 0;

  if (sqlite3_prepare_v2(h, "PRAGMA quick_check", -1, &st, NULL) != SQLITE_OK) {
    snprintf(detail, cap, "%s", sqlite3_errmsg(h));
    return 0;
  }
  if (sqlite3_step(st) == SQLITE_ROW) {
    const char *r = (const char *)sqlite3_column_text(st, 0);
    ok = r != NULL && strcmp(r, "ok") == 0;
    snprintf(detail, cap, "%s", r ? r : "no answer");
    /* quick_check's report spans lines; a log message does not. */
    for (char *c = detail; *c; c++)
      if (*c == '\n')
        *c = ' ';
  } else {
    snprintf(detail, cap, "%s", sqlite3_errmsg(h));
  }
  sqlite3_finalize(st);
  return ok;
}

int td_db_open(const char *path, td_db **out, char *err, size_t errlen) {
  char detail[256];
  td_db *db;
  int rc, version = 0;
  sqlite3_stmt *st;

  db = calloc(1, sizeof(*db));
  if (db == NULL)
    return TD_ENOMEM;
  td_strlcpy(db->path, path, sizeof(db->path));
  rc = sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "cannot open job database %s: %s", path,
             db->h ? sqlite3_errmsg(db->h) : "out of memory");
    goto fail;
  }
  sqlite3_busy_timeout(db->h, 5000);
  if (!td__integrity_ok(db->h, detail, sizeof(detail))) {
    snprintf(err, errlen,
             "job database %s failed its integrity check (%s); move it aside and "
             "restore a backup, or inspect it with `sqlite3 %s`",
             path, detail, path);
    goto fail;
  }
  if (td__exec(db, "PRAGMA journal_mode=WAL") < 0 ||
      td__exec(db, "PRAGMA synchronous=FULL") < 0 ||
      td__exec(db, "PRAGMA foreign_keys=ON") < 0) {
    snprintf(err, errlen, "cannot configure job database %s: %s", path, sqlite3_errmsg(db->h));
    goto fail;
  }
  if (sqlite3_prepare_v2(db->h, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW)
      version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
  }
  if (version > TD_DB_SCHEMA_VERSION) {
    snprintf(err, errlen,
             "job database %s has schema version %d, newer than this traind "
             "understands (%d); run a newer traind",
             path, version, TD_DB_SCHEMA_VERSION);
    goto fail;
  }
  for (; version < TD_DB_SCHEMA_VERSION; version++) {
    char bump[48];

    snprintf(bump, sizeof(bump), "PRAGMA user_version=%d", version + 1);
    if (td__exec(db, "BEGIN") < 0 || td__exec(db, td__migrations[version]) < 0 ||
        td__exec(db, bump) < 0 || td__exec(db, "COMMIT") < 0) {
      snprintf(err, errlen, "cannot migrate %s to schema version %d: %s", path, version + 1,
               sqlite3_errmsg(db->h));
      sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
      goto fail;
    }
    if (version > 0)
      td_info("job database %s migrated to schema version %d", path, version + 1);
  }

  rc = sqlite3_prepare_v2(db->h,
      "INSERT INTO jobs(key,name,state,priority,job_yaml,base_dir,submitted_ms,epochs,owner,"
      "uid,gid,sample_dtype,job_desc) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)", -1, &db->insert, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(db->h, "SELECT id FROM jobs WHERE key=?", -1, &db->find_key, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(db->h,
        "UPDATE jobs SET state=?,device=?,started_ms=?,finished_ms=?,loss=?,accuracy=?,"
        "samples_per_sec=?,model=?,error=?,exit_status=?,epoch=?,epochs=?,step=?,steps=?,"
        "retries=?,priority=?,warning=? WHERE id=?", -1, &db->update, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(db->h,
        "INSERT INTO job_history(job_id,at_ms,state,detail) VALUES(?,?,?,?)", -1,
        &db->history, NULL);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "cannot prepare statements on %s: %s", path, sqlite3_errmsg(db->h));
    goto fail;
  }
  *out = db;
  return 0;

fail:
  td_db_close(db);
  return TD_EDB;
}

void td_db_close(td_db *db) {
  if (db == NULL)
    return;
  sqlite3_finalize(db->insert);
  sqlite3_finalize(db->find_key);
  sqlite3_finalize(db->update);
  sqlite3_finalize(db->history);
  sqlite3_close(db->h);
  free(db);
}

static int td__history(td_db *db, const td_job *j, const char *detail) {
  sqlite3_stmt *st = db->history;
  int rc;

  sqlite3_reset(st);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)j->id);
  sqlite3_bind_int64(st, 2, td_now_unix_ms());
  sqlite3_bind_text(st, 3, td_job_state_name(j->state), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, detail ? detail : "", -1, SQLITE_TRANSIENT);
  rc = sqlite3_step(st);
  return rc == SQLITE_DONE ? 0 : td__db_err(db, rc, "history insert");
}

int td_db_insert(td_db *db, td_job *j, const char *key) {
  sqlite3_stmt *st = db->insert;
  int rc, err;

  if ((err = td__exec(db, "BEGIN IMMEDIATE")) < 0)
    return err;
  sqlite3_reset(st);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, j->name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, td_job_state_name(j->state), -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 4, j->priority);
  sqlite3_bind_text(st, 5, j->yaml, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, j->base_dir, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 7, j->submitted_ms);
  sqlite3_bind_int(st, 8, (int)j->epochs);
  sqlite3_bind_text(st, 9, j->owner, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 10, j->uid);
  sqlite3_bind_int64(st, 11, j->gid);
  sqlite3_bind_int(st, 12, j->sample_dtype);
  sqlite3_bind_blob(st, 13, j->desc, (int)j->desc_len, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc != SQLITE_DONE) {
    err = td__db_err(db, rc, "insert");
    goto rollback;
  }
  j->id = (uint64_t)sqlite3_last_insert_rowid(db->h);
  if ((err = td__history(db, j, "submitted")) < 0)
    goto rollback;
  /* COMMIT under synchronous=FULL returns after the WAL is fsync'd. */
  if ((err = td__exec(db, "COMMIT")) < 0)
    goto rollback;
  return 0;

rollback:
  sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
  j->id = 0;
  return err;
}

int td_db_job_yaml(td_db *db, uint64_t id, char **out) {
  sqlite3_stmt *st;
  const char *text;
  int rc;

  rc = sqlite3_prepare_v2(db->h, "SELECT job_yaml FROM jobs WHERE id=?", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return td__db_err(db, rc, "job file lookup");
  sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? TD_ENOENT : td__db_err(db, rc, "job file lookup");
  }
  text = (const char *)sqlite3_column_text(st, 0);
  *out = strdup(text != NULL ? text : "");
  sqlite3_finalize(st);
  return *out != NULL ? 0 : TD_ENOMEM;
}

int td_db_job_desc(td_db *db, uint64_t id, unsigned char **out, size_t *len) {
  sqlite3_stmt *st;
  const void *blob;
  int rc, n;

  rc = sqlite3_prepare_v2(db->h, "SELECT job_desc FROM jobs WHERE id=?", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return td__db_err(db, rc, "job description lookup");
  sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW || sqlite3_column_type(st, 0) != SQLITE_BLOB) {
    sqlite3_finalize(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? TD_ENOENT
                                                 : td__db_err(db, rc, "job description lookup");
  }
  blob = sqlite3_column_blob(st, 0);
  n = sqlite3_column_bytes(st, 0);
  if ((*out = malloc(n > 0 ? (size_t)n : 1)) != NULL && n > 0)
    memcpy(*out, blob, (size_t)n);
  *len = (size_t)n;
  sqlite3_finalize(st);
  return *out != NULL ? 0 : TD_ENOMEM;
}

int td_db_job_desc_record(td_db *db, td_job **jobs, size_t n) {
  sqlite3_stmt *st = NULL;
  size_t i, k = 0;
  int rc, err = 0;

  for (i = 0; i < n && jobs[i]->desc == NULL; i++) {
  }
  if (i == n)
    return 0;
  if ((err = td__exec(db, "BEGIN IMMEDIATE")) < 0)
    return err;
  rc = sqlite3_prepare_v2(db->h, "UPDATE jobs SET job_desc=? WHERE id=?", -1, &st, NULL);
  if (rc != SQLITE_OK) {
    err = td__db_err(db, rc, "job description update");
    goto rollback;
  }
  for (; i < n; i++) {
    td_job *j = jobs[i];

    if (j->desc == NULL)
      continue;
    if (j->desc_len > INT_MAX) {
      err = TD_ETOOBIG;
      goto rollback;
    }
    sqlite3_reset(st);
    sqlite3_bind_blob(st, 1, j->desc, (int)j->desc_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)j->id);
    if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
      err = td__db_err(db, rc, "job description update");
      goto rollback;
    }
    k++;
  }
  sqlite3_finalize(st);
  st = NULL;
  if ((err = td__exec(db, "COMMIT")) < 0)
    goto rollback;
  for (i = 0; i < n; i++) {
    free(jobs[i]->desc);
    jobs[i]->desc = NULL;
  }
  td_info("job database %s: recorded the descriptions of %zu jobs from before descriptions",
          db->path, k);
  return 0;

rollback:
  sqlite3_finalize(st);
  sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
  return err;
}

int td_db_find_key(td_db *db, const char *key, uint64_t *id) {
  sqlite3_stmt *st = db->find_key;
  int rc;

  sqlite3_reset(st);
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *id = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return 0;
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? TD_ENOENT : td__db_err(db, rc, "key lookup");
}

int td_db_update(td_db *db, const td_job *j, const char *detail) {
  sqlite3_stmt *st = db->update;
  int rc, err;

  if ((err = td__exec(db, "BEGIN IMMEDIATE")) < 0)
    return err;
  sqlite3_reset(st);
  sqlite3_bind_text(st, 1, td_job_state_name(j->state), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, j->device, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, j->started_ms);
  sqlite3_bind_int64(st, 4, j->finished_ms);
  sqlite3_bind_double(st, 5, j->loss);
  sqlite3_bind_double(st, 6, j->accuracy);
  sqlite3_bind_double(st, 7, j->samples_per_sec);
  sqlite3_bind_text(st, 8, TD_JOB_STR(j->model), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 9, TD_JOB_STR(j->error), -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 10, j->exit_status);
  sqlite3_bind_int64(st, 11, j->epoch);
  sqlite3_bind_int64(st, 12, j->epochs);
  sqlite3_bind_int64(st, 13, j->step);
  sqlite3_bind_int64(st, 14, j->steps);
  sqlite3_bind_int64(st, 15, j->retries);
  sqlite3_bind_int(st, 16, j->priority);
  sqlite3_bind_text(st, 17, TD_JOB_STR(j->warning), -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 18, (sqlite3_int64)j->id);
  rc = sqlite3_step(st);
  if (rc != SQLITE_DONE) {
    err = td__db_err(db, rc, "update");
    goto rollback;
  }
  if ((err = td__history(db, j, detail)) < 0)
    goto rollback;
  if ((err = td__exec(db, "COMMIT")) < 0)
    goto rollback;
  return 0;

rollback:
  sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
  return err;
}

static void td__col_str(sqlite3_stmt *st, int col, char *dst, size_t cap) {
  const char *s = (const char *)sqlite3_column_text(st, col);
  td_strlcpy(dst, s ? s : "", cap);
}

int td_db_load(td_db *db, int (*fn)(void *arg, td_job *j), void *arg) {
  sqlite3_stmt *st;
  int rc, err = 0;

  rc = sqlite3_prepare_v2(db->h,
      "SELECT id,name,state,priority,device,job_yaml,base_dir,submitted_ms,started_ms,"
      "finished_ms,epochs,loss,accuracy,samples_per_sec,model,error,exit_status,epoch,step,steps,"
      "owner,retries,uid,gid,sample_dtype,warning,job_desc"
      " FROM jobs ORDER BY id", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return td__db_err(db, rc, "load");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    char state[32];
    td_job *j = calloc(1, sizeof(*j));

    if (j == NULL) {
      err = TD_ENOMEM;
      break;
    }
    j->id = (uint64_t)sqlite3_column_int64(st, 0);
    j->val_accuracy = j->val_loss = j->train_accuracy = -1; /* not kept across restarts */
    j->top_k_accuracy = j->val_top_k_accuracy = j->mae = j->val_mae = j->train_mae = -1;
    td__col_str(st, 1, j->name, sizeof(j->name));
    td__col_str(st, 2, state, sizeof(state));
    if (td_job_state_parse(state, &j->state) < 0)
      j->state = TD_JOB_FAILED;
    j->priority = sqlite3_column_int(st, 3);
    td__col_str(st, 4, j->device, sizeof(j->device));
    /* A job that may run again needs its description; one written
     * before descriptions has only its YAML, to make one from. */
    if ((j->state == TD_JOB_QUEUED || j->state == TD_JOB_RUNNING) &&
        sqlite3_column_type(st, 26) == SQLITE_BLOB) {
      int n = sqlite3_column_bytes(st, 26);
      const void *b = sqlite3_column_blob(st, 26);

      if ((j->desc = malloc(n > 0 ? (size_t)n : 1)) == NULL) {
        free(j);
        err = TD_ENOMEM;
        break;
      }
      if (n > 0)
        memcpy(j->desc, b, (size_t)n);
      j->desc_len = (size_t)n;
    } else if (j->state == TD_JOB_QUEUED || j->state == TD_JOB_RUNNING) {
      const char *y = (const char *)sqlite3_column_text(st, 5);
      j->yaml = strdup(y ? y : "");
      if (j->yaml == NULL) {
        free(j);
        err = TD_ENOMEM;
        break;
      }
    }
    {
      const char *b = (const char *)sqlite3_column_text(st, 6);

      if ((j->base_dir = strdup(b ? b : "")) == NULL) {
        td_job_free(j);
        err = TD_ENOMEM;
        break;
      }
    }
    j->submitted_ms = sqlite3_column_int64(st, 7);
    j->started_ms = sqlite3_column_int64(st, 8);
    j->finished_ms = sqlite3_column_int64(st, 9);
    j->epochs = (uint32_t)sqlite3_column_int(st, 10);
    j->loss = sqlite3_column_double(st, 11);
    j->accuracy = sqlite3_column_double(st, 12);
    j->samples_per_sec = sqlite3_column_double(st, 13);
    td_job_set(&j->model, (const char *)sqlite3_column_text(st, 14));
    td_job_set(&j->error, (const char *)sqlite3_column_text(st, 15));
    j->exit_status = sqlite3_column_int(st, 16);
    j->epoch = (uint32_t)sqlite3_column_int(st, 17);
    j->step = (uint32_t)sqlite3_column_int(st, 18);
    j->steps = (uint32_t)sqlite3_column_int(st, 19);
    td__col_str(st, 20, j->owner, sizeof(j->owner));
    j->retries = (uint32_t)sqlite3_column_int(st, 21);
    j->uid = (uint32_t)sqlite3_column_int64(st, 22);
    j->gid = (uint32_t)sqlite3_column_int64(st, 23);
    j->sample_dtype = sqlite3_column_int(st, 24);
    td_job_set(&j->warning, (const char *)sqlite3_column_text(st, 25));
    if ((err = fn(arg, j)) < 0)
      break;
  }
  if (err == 0 && rc != SQLITE_DONE)
    err = td__db_err(db, rc, "load");
  sqlite3_finalize(st);
  return err;
}

int td_db_usage_load(td_db *db,
                     int (*fn)(void *arg, uint32_t uid, const char *name, double usage,
                               int64_t at_ms),
                     void *arg) {
  sqlite3_stmt *st;
  int rc, err = 0;

  rc = sqlite3_prepare_v2(db->h, "SELECT uid,name,usage,at_ms FROM user_usage", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return td__db_err(db, rc, "usage load");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *name = (const char *)sqlite3_column_text(st, 1);

    if ((err = fn(arg, (uint32_t)sqlite3_column_int64(st, 0), name ? name : "",
                  sqlite3_column_double(st, 2), sqlite3_column_int64(st, 3))) < 0)
      break;
  }
  if (err == 0 && rc != SQLITE_DONE)
    err = td__db_err(db, rc, "usage load");
  sqlite3_finalize(st);
  return err;
}

int td_db_usage_save(td_db *db, td_user *users, size_t n, int64_t at_ms) {
  sqlite3_stmt *st = NULL;
  int rc, err;

  if ((err = td__exec(db, "BEGIN IMMEDIATE")) < 0)
    return err;
  rc = sqlite3_prepare_v2(db->h,
      "INSERT OR REPLACE INTO user_usage(uid,name,usage,at_ms) VALUES(?,?,?,?)", -1, &st, NULL);
  if (rc != SQLITE_OK) {
    err = td__db_err(db, rc, "usage save");
    goto rollback;
  }
  for (size_t i = 0; i < n; i++) {
    if (!users[i].dirty)
      continue;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, users[i].uid);
    sqlite3_bind_text(st, 2, users[i].name, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, users[i].usage);
    sqlite3_bind_int64(st, 4, at_ms);
    if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
      err = td__db_err(db, rc, "usage save");
      goto rollback;
    }
  }
  sqlite3_finalize(st);
  st = NULL;
  if ((err = td__exec(db, "COMMIT")) < 0)
    goto rollback;
  for (size_t i = 0; i < n; i++)
    users[i].dirty = 0;
  return 0;

rollback:
  sqlite3_finalize(st);
  sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
  return err;
}

int td_db_delete_jobs(td_db *db, const uint64_t *ids, size_t n) {
  sqlite3_stmt *hist = NULL, *job = NULL;
  int rc, err;

  if (n == 0)
    return 0;
  if ((err = td__exec(db, "BEGIN IMMEDIATE")) < 0)
    return err;
  /* The idempotency key is a column of the job's row: it goes with it. */
  rc = sqlite3_prepare_v2(db->h, "DELETE FROM job_history WHERE job_id=?", -1, &hist, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(db->h, "DELETE FROM jobs WHERE id=?", -1, &job, NULL);
  if (rc != SQLITE_OK) {
    err = td__db_err(db, rc, "delete");
    goto rollback;
  }
  for (size_t i = 0; i < n; i++) {
    sqlite3_reset(hist);
    sqlite3_bind_int64(hist, 1, (sqlite3_int64)ids[i]);
    if ((rc = sqlite3_step(hist)) == SQLITE_DONE) {
      sqlite3_reset(job);
      sqlite3_bind_int64(job, 1, (sqlite3_int64)ids[i]);
      rc = sqlite3_step(job);
    }
    if (rc != SQLITE_DONE) {
      err = td__db_err(db, rc, "delete");
      goto rollback;
    }
  }
  sqlite3_finalize(hist);
  sqlite3_finalize(job);
  hist = job = NULL;
  if ((err = td__exec(db, "COMMIT")) < 0)
    goto rollback;
  return 0;

rollback:
  sqlite3_finalize(hist);
  sqlite3_finalize(job);
  sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
  return err;
}

int td_db_override_save(td_db *db, const char *name, uint64_t budget, int drain) {
  sqlite3_stmt *st = NULL;
  int rc, err;

  if (budget > INT64_MAX)
    return TD_EINVAL;
  rc = budget == 0 && !drain
           ? sqlite3_prepare_v2(db->h, "DELETE FROM device_overrides WHERE name=?", -1, &st,
                                NULL)
           : sqlite3_prepare_v2(db->h,
                                "INSERT OR REPLACE INTO device_overrides(name,budget,drain,at_ms)"
                                " VALUES(?,?,?,?)", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return td__db_err(db, rc, "device override");
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  if (budget != 0 || drain) {
    sqlite3_bind_int64(st, 2, (sqlite3_int64)budget);
    sqlite3_bind_int(st, 3, drain != 0);
    sqlite3_bind_int64(st, 4, td_now_unix_ms());
  }
  /* One statement: its own transaction, durable when it returns. */
  rc = sqlite3_step(st);
  err = rc == SQLITE_DONE ? 0 : td__db_err(db, rc, "device override");
  sqlite3_finalize(st);
  return err;
}

int td_db_override_load(td_db *db,
                        int (*fn)(void *arg, const char *name, uint64_t budget, int drain),
                        void *arg) {
  sqlite3_stmt *st;
  int rc, err = 0;

  rc = sqlite3_prepare_v2(db->h, "SELECT name,budget,drain FROM device_overrides ORDER BY name",
                          -1, &st, NULL);
  if (rc != SQLITE_OK)
    return td__db_err(db, rc, "device override load");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *name = (const char *)sqlite3_column_text(st, 0);
    sqlite3_int64 budget = sqlite3_column_int64(st, 1);

    /* The database is an operator's to edit: a negative budget is none. */
    if ((err = fn(arg, name ? name : "", budget > 0 ? (uint64_t)budget : 0,
                  sqlite3_column_int(st, 2) != 0)) < 0)
      break;
  }
  if (err == 0 && rc != SQLITE_DONE)
    err = td__db_err(db, rc, "device override load");
  sqlite3_finalize(st);
  return err;
}
