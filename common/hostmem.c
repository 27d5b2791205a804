#include "hostmem.h"

#include <stdio.h>
#include <unistd.h>

#include "error.h"

int td_host_mem_from(const char *meminfo, uint64_t *total, uint64_t *available) {
  unsigned long long kib, t = 0, a = 0;
  int found = 0;
  char line[128];
  FILE *f = fopen(meminfo, "r");
  long page = sysconf(_SC_PAGESIZE);

  while (f != NULL && found != 3 && fgets(line, sizeof(line), f) != NULL) {
    if (sscanf(line, "MemTotal: %llu kB", &kib) == 1) {
      t = kib * 1024;
      found |= 1;
    } else if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
      a = kib * 1024;
      found |= 2;
    }
  }
  if (f != NULL)
    fclose(f);
  if (!(found & 1) || t == 0) {
    long pages = sysconf(_SC_PHYS_PAGES);

    if (pages <= 0 || page <= 0)
      return TD_EIO;
    t = (unsigned long long)pages * (unsigned long long)page;
  }
  if (!(found & 2)) {
    long avphys = sysconf(_SC_AVPHYS_PAGES);

    if (avphys < 0 || page <= 0)
      return TD_EIO;
    a = (unsigned long long)avphys * (unsigned long long)page;
  }
  *total = t;
  *available = a < t ? a : t;
  return 0;
}

int td_host_mem(uint64_t *total, uint64_t *available) {
  return td_host_mem_from("/proc/meminfo", total, available);
}
