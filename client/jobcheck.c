/* What the client checks before it sends a job file: traind never opens a
 * path from a job file (it would do so with its own rights), so the client,
 * which runs as the person who submits, reads the dataset's headers, the
 * init model's header and looks at the output's directory, and sends what
 * it found. */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "dataset.h"
#include "error.h"
#include "jobspec.h"
#include "modelfile.h"
#include "util.h"

/* The output's directory must exist and be writable, or the trained model
 * would have nowhere to go at the end of the job. */
static int check_output(const char *output) {
  char *copy = strdup(output), *dir;
  int rc = 0;

  if (copy == NULL) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  dir = dirname(copy);
  if (access(dir, W_OK | X_OK) != 0) {
    cli_fail("output: cannot write the model to %s: its directory %s %s; create it or "
             "choose another output", output, dir,
             errno == ENOENT ? "does not exist" : strerror(errno));
    rc = CLI_EXIT_REFUSED;
  }
  free(copy);
  return rc;
}

/* init: the model file's header against the model's tensors, so that a
 * file that does not match is refused now, not after the job waited in the
 * queue (the worker checks the whole file again). */
static int check_init(const td_jobspec *spec) {
  td_mf_tensor *want = calloc(TD_MF_MAX, sizeof(*want));
  td_st_file *f = NULL;
  char err[512];
  size_t n;
  int rc;

  if (want == NULL) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  if ((rc = td_safetensors_load_header(spec->init, &f, err, sizeof(err))) == 0 &&
      (rc = td_modelfile_tensors(spec, want, &n, err, sizeof(err))) == 0)
    rc = td_modelfile_check(f, want, n, err, sizeof(err));
  td_safetensors_free(f);
  free(want);
  if (rc == 0)
    return 0;
  cli_sanitize(err);
  cli_fail("init %s: %s", spec->init, err);
  return rc == TD_ENOMEM ? CLI_EXIT_JOB : CLI_EXIT_REFUSED;
}

int cli_check_job(const char *text, size_t len, const char *dir, int submit,
                  const char **dtype) {
  char err[1024];
  td_jobspec *spec = malloc(sizeof(*spec));
  td_dataset_info info;
  int rc;

  if (spec == NULL) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  err[0] = '\0';
  /* Parse errors and dataset mismatches read as traind would say them. */
  if ((rc = td_jobspec_parse(text, len, dir, spec, err, sizeof(err))) < 0 ||
      (rc = td_dataset_check(spec, err, sizeof(err))) < 0 ||
      (rc = td_dataset_probe(spec, &info, err, sizeof(err))) < 0) {
    cli_sanitize(err);
    cli_fail("%s", err[0] != '\0' ? err : td_strerror(rc));
    rc = CLI_EXIT_REFUSED;
    goto free_spec;
  }
  if (submit && spec->output[0] != '\0' && (rc = check_output(spec->output)) != 0)
    goto free_spec;
  if (spec->init[0] != '\0' && (rc = check_init(spec)) != 0)
    goto free_spec;
  *dtype = td_dtype_name(info.dtype);
  rc = 0;
free_spec:
  free(spec);
  return rc;
}
