/* Internal interfaces between the shim's three parts: config.c (environment, sizes, meminfo),
 * ledger.c (the shared per-budget ledger) and hooks.c (the interposed driver calls). */
#ifndef BALDR_MEMCAP_INTERNAL_H
#define BALDR_MEMCAP_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include "baldr_memcap.h"

#define BM_EXPORT __attribute__((visibility("default")))
#define BM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define BM_NO_CAP UINT64_MAX

enum bm_unified { BM_UNIFIED_AUTO, BM_UNIFIED_ON, BM_UNIFIED_OFF };

/* Configuration, read once from the environment at load. A size given as a percentage keeps its
 * centipercent until the device total is known (first allocation or query). */
struct bm_config {
    int has_limit;
    unsigned long long limit_bytes;
    unsigned int limit_centipct;
    unsigned long long floor_bytes;
    unsigned int floor_centipct;
    char budget[65];
    int budget_ok;
    enum bm_unified unified;
    int on_error_closed;
    int bad_value;        /* some variable was malformed; with on_error_closed, refuse allocations */
    char meminfo_path[256];
};

extern struct bm_config bm_cfg;

/* config.c */
void bm_config_load(int quiet);
int bm_meminfo_open(void);                                  /* kept-open fd, -1 on failure */
int bm_meminfo_parse_fd(int fd, struct baldr_memcap_meminfo *out);
uint64_t bm_now_coarse_ns(void);
void bm_say(const char *msg);                               /* one line on stderr */

/* ledger.c: the shared counter and per-process slots. */
struct bm_slot {
    _Atomic int32_t pid;        /* >0 owner; 0 free; <0 being reclaimed by -pid */
    uint32_t pad;
    _Atomic uint64_t start;     /* owner's start time (clock ticks since boot); 0 while claiming */
    _Atomic uint64_t used;      /* bytes this process holds */
    uint64_t pad2;
};

struct bm_ledger {
    uint64_t magic;
    uint32_t layout, nslots;
    _Atomic uint64_t cap;           /* cap of the last process to join (BM_NO_CAP: none) */
    uint64_t pad0[5];
    _Atomic uint64_t committed;     /* own cache line: the one word every allocation CASes */
    uint64_t pad1[7];
    struct bm_slot slots[BALDR_MEMCAP_SLOTS];
};

/* Map the budget's ledger (creating it) and claim a slot for this process. On failure returns
 * NULL and sets *why to a static reason. */
struct bm_ledger *bm_ledger_attach(const char *budget, uint64_t cap, struct bm_slot **slot,
                                   const char **why);
/* A process-private ledger (shared only with fork children) for on_error=open. */
struct bm_ledger *bm_ledger_private(struct bm_slot **slot);
/* Return the shares of dead processes to the pool; returns bytes reclaimed. */
uint64_t bm_ledger_reclaim(struct bm_ledger *L);
uint64_t bm_self_start_time(void);

#endif
