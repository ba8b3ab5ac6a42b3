/* The shim's own C API: what baldr_ops.shim calls through cffi (size parsing, the free-memory
 * formula, meminfo and ledger reads), so Python and the preloaded library share one implementation.
 * baldr_ops/shim.py feeds the text between the cffi markers to ffi.cdef(): keep it plain C there. */
#ifndef BALDR_MEMCAP_API_H
#define BALDR_MEMCAP_API_H

#include <stddef.h>

/* cffi-begin */
#define BALDR_MEMCAP_LAYOUT 1
#define BALDR_MEMCAP_SLOTS 256

struct baldr_memcap_meminfo {
    unsigned long long mem_total, mem_free, mem_available;  /* bytes */
    unsigned long long hugepages_total, hugepages_free, hugepage_size;
    unsigned long long available_eff;  /* MemAvailable, or free hugepages when hugetlb is configured */
};

struct baldr_memcap_slot_view {
    int pid;
    int alive;
    unsigned long long start_time;  /* clock ticks since boot, from /proc/PID/stat */
    unsigned long long used;
};

struct baldr_memcap_view {
    unsigned int layout;
    unsigned int nslots;            /* slots in use, listed in slots[] */
    unsigned long long cap;         /* ~0ULL: no cap */
    unsigned long long committed;
    unsigned long long dead_used;   /* held by slots of dead processes, not yet reclaimed */
    struct baldr_memcap_slot_view slots[256];
};

/* Parse a size: bytes, a binary K/M/G/T suffix (optional "iB"/"B"), decimals allowed with a suffix,
 * or a percentage when allow_percent ("90%", up to 2 decimals). Returns 0 and sets exactly one of
 * *bytes / *centipercent (hundredths of a percent); else -1 with a one-line reason in err. */
int baldr_memcap_parse_size(const char *text, int allow_percent, unsigned long long *bytes,
                            unsigned int *centipercent, char *err, size_t errlen);
/* 0 if name is a valid budget name ([A-Za-z0-9._-], 1-64 chars), else -1 with the reason. */
int baldr_memcap_check_budget(const char *name, char *err, size_t errlen);
/* The ledger's path under /dev/shm for this user and budget; 0 or -1. */
int baldr_memcap_ledger_path(const char *budget, char *out, size_t outlen);
/* Snapshot a ledger without joining it: 0, or -errno (-ENOENT: no process has used this budget). */
int baldr_memcap_ledger_read(const char *budget, struct baldr_memcap_view *out);
/* Parse a meminfo file (NULL: /proc/meminfo): 0 or -errno. */
int baldr_memcap_meminfo_read(const char *path, struct baldr_memcap_meminfo *out);
/* What the shim reports as free: min(cap - committed, available - floor), clamped to [0, total]. */
unsigned long long baldr_memcap_free_figure(unsigned long long cap, unsigned long long committed,
                                            unsigned long long available, unsigned long long floor,
                                            unsigned long long total);
/* Resolve a parsed size against a total: centipercent ? total * centipercent / 10000 : bytes. */
unsigned long long baldr_memcap_resolve(unsigned long long bytes, unsigned int centipercent,
                                        unsigned long long total);
/* cffi-end */

#endif
