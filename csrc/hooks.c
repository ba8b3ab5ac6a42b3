/* The interposed driver calls.
 *
 * A program reaches the driver three ways, and each is covered:
 *   1. linking against libcuda: our exported functions of the same names win (LD_PRELOAD order);
 *   2. dlopen("libcuda.so.1") + dlsym(handle, name), as MAX and the CUDA runtime do: a handle lookup
 *      never sees a preload, so we export dlsym itself and hand back our wrapper when the real
 *      answer is exactly the driver function we wrap;
 *   3. cuGetProcAddress(_v2): we call the real one with the caller's exact arguments and replace the
 *      pointer only if it is one of the driver functions we wrap, so the caller keeps the ABI
 *      version and per-thread-stream variant it asked for.
 * Real functions are resolved once, from the libcuda/libnvidia-ml the program itself loads.
 *
 * The allocation path is: charge() (arithmetic and a CAS on the ledger), the driver call, then an
 * insert into a lock-free open-addressing table that remembers the size for the free. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cuabi.h"
#include "memcap.h"

/* ---- the wrapped functions and the real ones behind them ------------------------------------- */

#define CU_HOOKS(X)                                                                                      \
    X(cuMemAlloc_v2, (CUdeviceptr * dptr, size_t n))                                                     \
    X(cuMemFree_v2, (CUdeviceptr p))                                                                     \
    X(cuMemAllocPitch_v2, (CUdeviceptr * dptr, size_t *pitch, size_t w, size_t h, unsigned int elem))    \
    X(cuMemAllocManaged, (CUdeviceptr * dptr, size_t n, unsigned int flags))                             \
    X(cuMemAllocAsync, (CUdeviceptr * dptr, size_t n, CUstream s))                                       \
    X(cuMemAllocAsync_ptsz, (CUdeviceptr * dptr, size_t n, CUstream s))                                  \
    X(cuMemAllocFromPoolAsync, (CUdeviceptr * dptr, size_t n, CUmemoryPool pool, CUstream s))            \
    X(cuMemAllocFromPoolAsync_ptsz, (CUdeviceptr * dptr, size_t n, CUmemoryPool pool, CUstream s))       \
    X(cuMemFreeAsync, (CUdeviceptr p, CUstream s))                                                       \
    X(cuMemFreeAsync_ptsz, (CUdeviceptr p, CUstream s))                                                  \
    X(cuMemPoolTrimTo, (CUmemoryPool pool, size_t keep))                                                 \
    X(cuMemPoolDestroy, (CUmemoryPool pool))                                                             \
    X(cuMemCreate, (CUmemGenericAllocationHandle * h, size_t n, const CUmemAllocationProp *prop,         \
                    unsigned long long flags))                                                           \
    X(cuMemRelease, (CUmemGenericAllocationHandle h))                                                    \
    X(cuMemAllocHost_v2, (void **pp, size_t n))                                                          \
    X(cuMemHostAlloc, (void **pp, size_t n, unsigned int flags))                                         \
    X(cuMemFreeHost, (void *p))                                                                          \
    X(cuMemHostRegister_v2, (void *p, size_t n, unsigned int flags))                                     \
    X(cuMemHostUnregister, (void *p))                                                                    \
    X(cuMemGetInfo, (unsigned int *free, unsigned int *total))                                           \
    X(cuMemGetInfo_v2, (size_t * free, size_t *total))                                                   \
    X(cuDeviceTotalMem, (unsigned int *bytes, CUdevice dev))                                             \
    X(cuDeviceTotalMem_v2, (size_t * bytes, CUdevice dev))                                               \
    X(cuGetProcAddress, (const char *sym, void **pfn, int ver, cuuint64_t flags))                        \
    X(cuGetProcAddress_v2, (const char *sym, void **pfn, int ver, cuuint64_t flags,                      \
                            CUdriverProcAddressQueryResult *status))

/* Driver calls the shim itself needs, never substituted. */
#define CU_HELPERS(X)                                                                                    \
    X(cuCtxGetDevice, (CUdevice * dev))                                                                  \
    X(cuDeviceGetMemPool, (CUmemoryPool * pool, CUdevice dev))                                           \
    X(cuMemPoolGetAttribute, (CUmemoryPool pool, int attr, void *value))                                 \
    X(cuDeviceGetAttribute, (int *value, int attr, CUdevice dev))

#define NVML_HOOKS(X)                                                                                    \
    X(nvmlDeviceGetMemoryInfo, (nvmlDevice_t d, nvmlMemory_t * m))                                       \
    X(nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t d, nvmlMemory_v2_t * m))

#define DECLARE_HOOK(name, args) static int(*real_##name) args; BM_EXPORT int name args;
#define DECLARE_HELPER(name, args) static int(*real_##name) args;
CU_HOOKS(DECLARE_HOOK)
CU_HELPERS(DECLARE_HELPER)
NVML_HOOKS(DECLARE_HOOK)

struct hook {
    const char *name;
    void *wrapper;
    void **real;
};
#define HOOK_ENTRY(name, args) {#name, (void *)name, (void **)&real_##name},
#define HELPER_ENTRY(name, args) {#name, NULL, (void **)&real_##name},
static const struct hook cu_hooks[] = {CU_HOOKS(HOOK_ENTRY) CU_HELPERS(HELPER_ENTRY)};
static const struct hook nvml_hooks[] = {NVML_HOOKS(HOOK_ENTRY)};
#define NHOOKS(t) (sizeof(t) / sizeof((t)[0]))

static void *(*real_dlsym)(void *, const char *);
static pthread_once_t cu_once = PTHREAD_ONCE_INIT, nvml_once = PTHREAD_ONCE_INIT;
static __thread int in_resolve; /* the driver's own constructors may call dlsym while we load it */
static int passive;             /* loaded by dlopen (cffi), not preloaded: library functions only */

/* The sanitizer runtimes call dlsym while they start, before they can serve instrumented code: the
 * dlsym path must not be instrumented (only matters for the -fsanitize test builds). */
#define BM_NOSAN __attribute__((no_sanitize_address, no_sanitize_thread, no_sanitize_undefined))

BM_NOSAN static void find_real_dlsym(void)
{
    /* glibc >= 2.34 exports dlsym from libc under GLIBC_2.34; older ones under the base version. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.17", "GLIBC_2.2.5", NULL};
    void *p = NULL;
    for (int i = 0; !p && versions[i]; i++)
        p = dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    __atomic_store_n(&real_dlsym, (void *(*)(void *, const char *))p, __ATOMIC_RELEASE);
}

static void resolve_from(const char *soname, const struct hook *t, size_t n)
{
    in_resolve++;
    /* The program's copy if it already has one (same object, so pointers compare equal). */
    void *h = dlopen(soname, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
    if (!h)
        h = dlopen(soname, RTLD_LAZY | RTLD_LOCAL);
    if (h)
        for (size_t i = 0; i < n; i++)
            __atomic_store_n(t[i].real, real_dlsym(h, t[i].name), __ATOMIC_RELEASE);
    in_resolve--;
}

static void resolve_cu(void) { resolve_from("libcuda.so.1", cu_hooks, NHOOKS(cu_hooks)); }
static void resolve_nvml(void) { resolve_from("libnvidia-ml.so.1", nvml_hooks, NHOOKS(nvml_hooks)); }

/* In a wrapper: make sure the real function is known (it is, unless the program called us before
 * our constructor ran) and fail like a missing entry point otherwise. */
#define NEED_CU(name)                                                                                    \
    do {                                                                                                 \
        if (BM_UNLIKELY(!real_##name)) {                                                                 \
            pthread_once(&cu_once, resolve_cu);                                                          \
            if (!real_##name)                                                                            \
                return CUDA_ERROR_NOT_FOUND;                                                             \
        }                                                                                                \
    } while (0)

/* Our wrapper for a real driver function pointer, or the pointer itself. */
static void *substitute(const struct hook *t, size_t n, void *p)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].wrapper && *t[i].real == p)
            return t[i].wrapper;
    return p;
}

BM_NOSAN static const struct hook *find_hook(const struct hook *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].wrapper && strcmp(t[i].name, name) == 0)
            return &t[i];
    return NULL;
}

BM_EXPORT BM_NOSAN void *dlsym(void *handle, const char *name)
{
    if (BM_UNLIKELY(!real_dlsym))
        find_real_dlsym();
    /* RTLD_DEFAULT/RTLD_NEXT depend on the caller: leave them to a tail call so glibc sees the
     * caller's return address (RTLD_DEFAULT finds our exports anyway, as we are preloaded). */
    if (handle != RTLD_DEFAULT && handle != RTLD_NEXT && !in_resolve && !passive) {
        const struct hook *t = NULL;
        size_t n = 0;
        pthread_once_t *once = NULL;
        void (*resolve)(void) = NULL;
        if (name[0] == 'c' && name[1] == 'u') {
            t = cu_hooks, n = NHOOKS(cu_hooks), once = &cu_once, resolve = resolve_cu;
        } else if (strncmp(name, "nvml", 4) == 0) {
            t = nvml_hooks, n = NHOOKS(nvml_hooks), once = &nvml_once, resolve = resolve_nvml;
        }
        if (t && find_hook(t, n, name)) {
            void *p = real_dlsym(handle, name);
            if (!p)
                return p;
            pthread_once(once, resolve);
            return substitute(t, n, p);
        }
    }
    return real_dlsym(handle, name);
}

/* ---- process state ----------------------------------------------------------------------------- */

enum { T_DEV, T_HOST, T_REG, T_VMM, T_COUNT }; /* separate key spaces: pointers vs handles */
#define TABLE_BITS 16
#define TABLE_SIZE (1u << TABLE_BITS)
#define PROBE_MAX 512
#define TOMB UINT64_MAX
#define MEMINFO_TTL_NS 10000000ull   /* 10 ms */
#define RECLAIM_EVERY_NS 100000000ull /* queries reap dead processes at most every 100 ms */
#define POOLS 64

struct entry {
    _Atomic uint64_t key;
    _Atomic uint64_t size;
};

struct pool_rec {
    _Atomic uintptr_t pool;
    _Atomic uint64_t charged; /* the pool's reserve, as last read */
};

static struct bm_ledger *g_ledger;
static _Atomic(struct bm_slot *) g_slot; /* non-NULL once joined; the hot path's only guard */
static uint64_t g_cap = BM_NO_CAP;       /* 0 when refusing everything (on_error=closed) */
static uint64_t g_floor;
static int g_floor_active;               /* unified memory and a floor > 0 */
static int g_refuse_all;
static int g_untracked_closed;           /* table full: closed refuses, open lets it through */
static struct entry *g_tab[T_COUNT];
static struct pool_rec g_pools[POOLS];
static pthread_mutex_t g_join_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t g_dev_total;     /* device 0's total as the driver reports it */
static _Atomic int g_unified = -1;       /* -1 not known yet */
static _Atomic int g_warned;
static _Atomic uint64_t g_last_reclaim;

static int g_meminfo_fd = -1;
static _Atomic uint64_t snap_avail, snap_total, snap_committed, snap_time;
static _Atomic int snap_ok;
static atomic_flag snap_busy = ATOMIC_FLAG_INIT;

static void warn_once(int bit, const char *msg)
{
    if (!(atomic_fetch_or(&g_warned, bit) & bit))
        bm_say(msg);
}

static uint64_t committed_now(void)
{
    return g_ledger ? atomic_load_explicit(&g_ledger->committed, memory_order_relaxed) : 0;
}

/* MemAvailable (or free hugepages) through the kept-open fd, cached for MEMINFO_TTL_NS. */
static int meminfo_refresh(int force)
{
    uint64_t now = bm_now_coarse_ns();
    if (!force && atomic_load(&snap_ok) && now - atomic_load(&snap_time) < MEMINFO_TTL_NS)
        return 1;
    if (g_meminfo_fd < 0 || atomic_flag_test_and_set(&snap_busy))
        return atomic_load(&snap_ok); /* another thread is reading it: the last figure will do */
    struct baldr_memcap_meminfo m;
    if (bm_meminfo_parse_fd(g_meminfo_fd, &m) == 0) {
        atomic_store(&snap_avail, m.available_eff);
        atomic_store(&snap_total, m.mem_total);
        atomic_store(&snap_committed, committed_now());
        atomic_store(&snap_time, now);
        atomic_store(&snap_ok, 1);
    }
    atomic_flag_clear(&snap_busy);
    return atomic_load(&snap_ok);
}

/* Would `n` more bytes leave MemAvailable under the floor? Our own allocations since the last read
 * are subtracted, so a burst between reads is seen without reading again. */
static inline int floor_ok(uint64_t committed, uint64_t n)
{
    uint64_t avail = atomic_load_explicit(&snap_avail, memory_order_relaxed);
    uint64_t at = atomic_load_explicit(&snap_committed, memory_order_relaxed);
    if (committed > at)
        avail = avail > committed - at ? avail - (committed - at) : 0;
    else
        avail += at - committed;
    return avail >= g_floor && avail - g_floor >= n;
}

static CUdevice current_device(void)
{
    CUdevice d = 0;
    if (!real_cuCtxGetDevice || real_cuCtxGetDevice(&d) != CUDA_SUCCESS)
        d = 0;
    return d;
}

static int is_unified(void)
{
    if (bm_cfg.unified != BM_UNIFIED_AUTO)
        return bm_cfg.unified == BM_UNIFIED_ON;
    int u = atomic_load(&g_unified);
    if (u >= 0)
        return u;
    int v = 0;
    if (real_cuDeviceGetAttribute &&
        real_cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_INTEGRATED, current_device()) == CUDA_SUCCESS) {
        atomic_store(&g_unified, v != 0);
        return v != 0;
    }
    return 0;
}

static uint64_t device_total(uint64_t hint)
{
    if (hint) {
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&g_dev_total, &zero, hint);
        return hint;
    }
    uint64_t t = atomic_load(&g_dev_total);
    size_t b = 0;
    if (!t && real_cuDeviceTotalMem_v2 && real_cuDeviceTotalMem_v2(&b, current_device()) == CUDA_SUCCESS && b) {
        t = b;
        atomic_store(&g_dev_total, t);
    }
    return t;
}

/* Join the ledger: resolve the configuration against the device, map the budget's ledger, claim a
 * slot. Once per process (and again in a fork child). Returns 0 when the configuration cannot be
 * resolved yet (a percentage before the driver can tell the device's size). */
static int join(uint64_t total_hint)
{
    pthread_mutex_lock(&g_join_lock);
    if (atomic_load(&g_slot)) {
        pthread_mutex_unlock(&g_join_lock);
        return 1;
    }
    uint64_t total = 0;
    if (bm_cfg.limit_centipct || bm_cfg.floor_centipct) {
        total = total_hint ? total_hint : device_total(0);
        if (!total) {
            pthread_mutex_unlock(&g_join_lock);
            return 0;
        }
    }
    g_cap = bm_cfg.has_limit ? baldr_memcap_resolve(bm_cfg.limit_bytes, bm_cfg.limit_centipct, total) : BM_NO_CAP;
    g_floor = baldr_memcap_resolve(bm_cfg.floor_bytes, bm_cfg.floor_centipct, total);
    g_floor_active = g_floor > 0 && is_unified() && g_meminfo_fd >= 0;
    if (g_floor_active)
        meminfo_refresh(1);
    for (int t = 0; t < T_COUNT; t++) {
        if (!g_tab[t]) {
            void *m = mmap(NULL, TABLE_SIZE * sizeof(struct entry), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            g_tab[t] = m == MAP_FAILED ? NULL : m;
        }
    }
    struct bm_slot *slot = NULL;
    const char *why = "invalid BALDR_MEMCAP_BUDGET";
    struct bm_ledger *L = bm_cfg.budget_ok ? bm_ledger_attach(bm_cfg.budget, g_cap, &slot, &why) : NULL;
    if (!L) {
        char msg[300];
        snprintf(msg, sizeof msg, "ledger unavailable (%s); %s", why,
                 bm_cfg.on_error_closed ? "BALDR_MEMCAP_ON_ERROR=closed: capped allocations will be refused"
                                        : "the cap applies to this process (and its fork children) only");
        warn_once(1, msg);
        if (bm_cfg.on_error_closed)
            g_refuse_all = 1;
        L = bm_ledger_private(&slot);
    }
    if (bm_cfg.bad_value && bm_cfg.on_error_closed)
        g_refuse_all = 1;
    g_untracked_closed = bm_cfg.on_error_closed;
    if (!L || !slot) {
        pthread_mutex_unlock(&g_join_lock);
        return 0;
    }
    if (g_refuse_all)
        g_cap = 0; /* every charge then fails on the fast path's own check */
    g_ledger = L;
    atomic_store_explicit(&g_slot, slot, memory_order_release);
    pthread_mutex_unlock(&g_join_lock);
    return 1;
}

/* ---- charging ------------------------------------------------------------------------------------ */

enum { CHARGED, REFUSED, PASS };

static inline void add_used(uint64_t n)
{
    atomic_fetch_add_explicit(&atomic_load_explicit(&g_slot, memory_order_relaxed)->used, n, memory_order_relaxed);
}

static inline void uncharge(uint64_t n)
{
    struct bm_slot *s = atomic_load_explicit(&g_slot, memory_order_relaxed);
    if (!s || !n)
        return;
    /* Saturating: a reclaim that misjudged us dead must not wrap the counter to "full". */
    uint64_t c = atomic_load_explicit(&g_ledger->committed, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&g_ledger->committed, &c, c > n ? c - n : 0,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
    uint64_t u = atomic_load_explicit(&s->used, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&s->used, &u, u > n ? u - n : 0, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

/* Charge without a cap check: memory the driver already handed out (pool growth). */
static void force_charge(uint64_t n)
{
    if (!atomic_load_explicit(&g_slot, memory_order_acquire) || !n)
        return;
    atomic_fetch_add_explicit(&g_ledger->committed, n, memory_order_relaxed);
    add_used(n);
}

static int try_reserve(uint64_t n, int fresh)
{
    uint64_t c = atomic_load_explicit(&g_ledger->committed, memory_order_relaxed);
    for (;;) {
        if (n > g_cap || c > g_cap - n)
            return 0;
        if (g_floor_active) {
            if (!fresh && bm_now_coarse_ns() - atomic_load_explicit(&snap_time, memory_order_relaxed) >= MEMINFO_TTL_NS)
                return 0; /* stale figure: decide on the slow path with a fresh one */
            if (!floor_ok(c, n))
                return 0;
        }
        if (atomic_compare_exchange_weak_explicit(&g_ledger->committed, &c, c + n, memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
    }
    add_used(n);
    return 1;
}

static int charge_slow(uint64_t n)
{
    if (!atomic_load_explicit(&g_slot, memory_order_acquire) && !join(0))
        return PASS;
    if (g_refuse_all)
        return REFUSED;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (g_floor_active)
            meminfo_refresh(1);
        if (try_reserve(n, 1))
            return CHARGED;
        /* Before refusing, return the shares of processes that died since we last looked. */
        if (attempt == 0 && !bm_ledger_reclaim(g_ledger) && !g_floor_active)
            break;
    }
    return REFUSED;
}

static inline int charge(uint64_t n)
{
    if (BM_UNLIKELY(!atomic_load_explicit(&g_slot, memory_order_acquire)))
        return charge_slow(n);
    if (BM_UNLIKELY(!try_reserve(n, 0)))
        return charge_slow(n);
    return CHARGED;
}

/* ---- size-at-free tables -------------------------------------------------------------------------- */

static inline uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

/* Remember key -> size at the first free or deleted spot from the key's home. Deleted spots stay
 * as tombstones (reused by later inserts): removing them safely would need a lock. */
static int put(int t, uint64_t key, uint64_t size)
{
    struct entry *e = g_tab[t];
    if (!e || key == 0 || key == TOMB)
        return 0;
    uint64_t i = mix(key);
    for (int probe = 0; probe < PROBE_MAX;) {
        struct entry *x = &e[i & (TABLE_SIZE - 1)];
        uint64_t k = atomic_load_explicit(&x->key, memory_order_relaxed);
        if (k == 0 || k == TOMB) {
            if (atomic_compare_exchange_strong_explicit(&x->key, &k, key, memory_order_acq_rel,
                                                        memory_order_relaxed)) {
                atomic_store_explicit(&x->size, size, memory_order_release);
                return 1;
            }
            continue; /* another thread took this spot: look at it again */
        }
        probe++, i++;
    }
    return 0;
}

/* Forget key; returns its size, or 0 if we never charged it. */
static uint64_t take(int t, uint64_t key)
{
    struct entry *e = g_tab[t];
    if (!e || key == 0 || key == TOMB || !atomic_load_explicit(&g_slot, memory_order_relaxed))
        return 0;
    uint64_t i = mix(key);
    for (int probe = 0; probe < PROBE_MAX; probe++, i++) {
        struct entry *x = &e[i & (TABLE_SIZE - 1)];
        uint64_t k = atomic_load_explicit(&x->key, memory_order_acquire);
        if (k == 0)
            return 0;
        if (k == key) {
            /* A plain store, not a CAS: only a double free (undefined for the driver too) could
             * race us for the same key. */
            uint64_t size = atomic_load_explicit(&x->size, memory_order_relaxed);
            atomic_store_explicit(&x->key, TOMB, memory_order_release);
            return size;
        }
    }
    return 0;
}

/* After a charged allocation succeeded: remember it. If the table is full, an open policy keeps the
 * allocation uncharged; a closed one asks the caller to undo it. Returns 0 to undo. */
static int track(int t, uint64_t key, uint64_t n)
{
    if (BM_UNLIKELY(!put(t, key, n))) {
        uncharge(n);
        warn_once(2, "allocation table full; further allocations are not counted");
        return !g_untracked_closed;
    }
    return 1;
}

/* Frees: forget first, so the address cannot be handed out again while it is still in the table;
 * put it back if the driver refuses the free. */
#define FREE_TRACKED(table, key, call)                                                                   \
    do {                                                                                                 \
        uint64_t sz_ = take(table, key);                                                                 \
        CUresult r_ = call;                                                                              \
        if (sz_) {                                                                                       \
            if (r_ == CUDA_SUCCESS)                                                                      \
                uncharge(sz_);                                                                           \
            else                                                                                         \
                put(table, key, sz_);                                                                    \
        }                                                                                                \
        return r_;                                                                                       \
    } while (0)

/* ---- allocation wrappers --------------------------------------------------------------------------- */

/* The common shape: charge, call the driver, remember or give back. Outputs are the driver's
 * business unless we refuse, in which case they are left exactly as they were. */
#define ALLOC_TRACKED(table, n, call, keyexpr, undo)                                                     \
    do {                                                                                                 \
        int c_ = charge(n);                                                                              \
        if (c_ == REFUSED)                                                                               \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                             \
        CUresult r_ = call;                                                                              \
        if (c_ == CHARGED) {                                                                             \
            if (r_ != CUDA_SUCCESS)                                                                      \
                uncharge(n);                                                                             \
            else if (!track(table, (uint64_t)(keyexpr), n)) {                                            \
                undo;                                                                                    \
                return CUDA_ERROR_OUT_OF_MEMORY;                                                         \
            }                                                                                            \
        }                                                                                                \
        return r_;                                                                                       \
    } while (0)

BM_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t n)
{
    NEED_CU(cuMemAlloc_v2);
    if (!dptr || !n)
        return real_cuMemAlloc_v2(dptr, n);
    ALLOC_TRACKED(T_DEV, n, real_cuMemAlloc_v2(dptr, n), *dptr, real_cuMemFree_v2(*dptr));
}

BM_EXPORT CUresult cuMemFree_v2(CUdeviceptr p)
{
    NEED_CU(cuMemFree_v2);
    FREE_TRACKED(T_DEV, p, real_cuMemFree_v2(p));
}

BM_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t n, unsigned int flags)
{
    NEED_CU(cuMemAllocManaged);
    if (!dptr || !n)
        return real_cuMemAllocManaged(dptr, n, flags);
    ALLOC_TRACKED(T_DEV, n, real_cuMemAllocManaged(dptr, n, flags), *dptr, real_cuMemFree_v2(*dptr));
}

BM_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int elem)
{
    NEED_CU(cuMemAllocPitch_v2);
    if (!dptr || !pitch || !w || !h || w > SIZE_MAX / h)
        return real_cuMemAllocPitch_v2(dptr, pitch, w, h, elem);
    /* The pitch is only known afterwards: reserve rows padded to 512 bytes (no GPU aligns pitch
     * more coarsely), then settle on pitch x height. */
    uint64_t est = (((uint64_t)w + 511) & ~(uint64_t)511) * h;
    int c = charge(est);
    if (c == REFUSED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = real_cuMemAllocPitch_v2(dptr, pitch, w, h, elem);
    if (c != CHARGED)
        return r;
    if (r != CUDA_SUCCESS) {
        uncharge(est);
        return r;
    }
    uint64_t actual = (uint64_t)*pitch * h;
    if (actual > est)
        force_charge(actual - est);
    else
        uncharge(est - actual);
    if (!track(T_DEV, *dptr, actual)) {
        real_cuMemFree_v2(*dptr);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return r;
}

BM_EXPORT CUresult cuMemAllocHost_v2(void **pp, size_t n)
{
    NEED_CU(cuMemAllocHost_v2);
    if (!pp || !n)
        return real_cuMemAllocHost_v2(pp, n);
    ALLOC_TRACKED(T_HOST, n, real_cuMemAllocHost_v2(pp, n), (uintptr_t)*pp, real_cuMemFreeHost(*pp));
}

BM_EXPORT CUresult cuMemHostAlloc(void **pp, size_t n, unsigned int flags)
{
    NEED_CU(cuMemHostAlloc);
    if (!pp || !n)
        return real_cuMemHostAlloc(pp, n, flags);
    ALLOC_TRACKED(T_HOST, n, real_cuMemHostAlloc(pp, n, flags), (uintptr_t)*pp, real_cuMemFreeHost(*pp));
}

BM_EXPORT CUresult cuMemFreeHost(void *p)
{
    NEED_CU(cuMemFreeHost);
    FREE_TRACKED(T_HOST, (uintptr_t)p, real_cuMemFreeHost(p));
}

BM_EXPORT CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned int flags)
{
    NEED_CU(cuMemHostRegister_v2);
    if (!p || !n)
        return real_cuMemHostRegister_v2(p, n, flags);
    ALLOC_TRACKED(T_REG, n, real_cuMemHostRegister_v2(p, n, flags), (uintptr_t)p, real_cuMemHostUnregister(p));
}

BM_EXPORT CUresult cuMemHostUnregister(void *p)
{
    NEED_CU(cuMemHostUnregister);
    FREE_TRACKED(T_REG, (uintptr_t)p, real_cuMemHostUnregister(p));
}

/* VMM (MAX's path): every cuMemCreate is charged whatever its location type, since on an
 * integrated GPU device and host memory are the same DRAM. */
BM_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop,
                               unsigned long long flags)
{
    NEED_CU(cuMemCreate);
    if (!h || !n)
        return real_cuMemCreate(h, n, prop, flags);
    ALLOC_TRACKED(T_VMM, n, real_cuMemCreate(h, n, prop, flags), *h, real_cuMemRelease(*h));
}

BM_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    NEED_CU(cuMemRelease);
    FREE_TRACKED(T_VMM, h, real_cuMemRelease(h));
}

/* ---- stream-ordered allocations: charged by pool reserve ----------------------------------------- */

static struct pool_rec *pool_rec(CUmemoryPool pool, int create)
{
    uintptr_t key = (uintptr_t)pool;
    if (!key)
        return NULL;
    for (unsigned i = 0; i < POOLS; i++) {
        struct pool_rec *r = &g_pools[(mix(key) + i) % POOLS];
        uintptr_t k = atomic_load(&r->pool);
        if (k == key)
            return r;
        if (k == 0) {
            if (!create)
                return NULL;
            if (atomic_compare_exchange_strong(&r->pool, &k, key) || k == key)
                return r;
        }
    }
    return NULL;
}

/* Charge the pool's reserve as the driver reports it now. Unconditional: the memory is taken. */
static void pool_sync(struct pool_rec *r)
{
    cuuint64_t reserved = 0;
    if (!r || !real_cuMemPoolGetAttribute ||
        real_cuMemPoolGetAttribute((CUmemoryPool)atomic_load(&r->pool), CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                                   &reserved) != CUDA_SUCCESS)
        return;
    uint64_t old = atomic_exchange(&r->charged, reserved);
    if (reserved > old)
        force_charge(reserved - old);
    else
        uncharge(old - reserved);
}

static void pools_sync_all(void)
{
    for (unsigned i = 0; i < POOLS; i++)
        if (atomic_load(&g_pools[i].pool))
            pool_sync(&g_pools[i]);
}

static CUresult alloc_async(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s, int from_pool,
                            int (*plain)(CUdeviceptr *, size_t, CUstream),
                            int (*pooled)(CUdeviceptr *, size_t, CUmemoryPool, CUstream),
                            int (*free_async)(CUdeviceptr, CUstream))
{
#define CALL_REAL() (from_pool ? pooled(dptr, n, pool, s) : plain(dptr, n, s))
    CUdevice dev;
    if (!dptr || !n)
        return CALL_REAL();
    if (!from_pool && (!real_cuCtxGetDevice || !real_cuDeviceGetMemPool || real_cuCtxGetDevice(&dev) != CUDA_SUCCESS ||
                       real_cuDeviceGetMemPool(&pool, dev) != CUDA_SUCCESS))
        return CALL_REAL(); /* no context: the driver will say so */
    /* Reserve the request (rounded to the 2 MiB a pool grows by) until the pool's new reserve is
     * known; before refusing, trim what the pool holds unused and try once more. */
    uint64_t want = ((uint64_t)n + (2u << 20) - 1) & ~(uint64_t)((2u << 20) - 1);
    int c = charge(want);
    struct pool_rec *rec = NULL;
    if (c == REFUSED && real_cuMemPoolTrimTo) {
        real_cuMemPoolTrimTo(pool, 0);
        pool_sync(pool_rec(pool, 0));
        c = charge(want);
    }
    if (c == REFUSED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL();
    if (c != CHARGED)
        return r;
    if (r == CUDA_SUCCESS) {
        rec = pool_rec(pool, 1);
        pool_sync(rec); /* charge the growth before letting go of the reservation */
    }
    uncharge(want);
    if (r == CUDA_SUCCESS && !rec) {
        warn_once(4, "more than 64 memory pools; allocations from the others are not counted");
    } else if (r == CUDA_SUCCESS && atomic_load_explicit(&g_ledger->committed, memory_order_relaxed) > g_cap) {
        /* The pool grew by more than we reserved and crossed the cap: undo. */
        CUdeviceptr p = *dptr;
        if (free_async)
            free_async(p, s);
        if (real_cuMemPoolTrimTo)
            real_cuMemPoolTrimTo(pool, 0);
        pool_sync(rec);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return r;
#undef CALL_REAL
}

BM_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t n, CUstream s)
{
    NEED_CU(cuMemAllocAsync);
    return alloc_async(dptr, n, NULL, s, 0, real_cuMemAllocAsync, NULL, real_cuMemFreeAsync);
}

BM_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t n, CUstream s)
{
    NEED_CU(cuMemAllocAsync_ptsz);
    return alloc_async(dptr, n, NULL, s, 0, real_cuMemAllocAsync_ptsz, NULL, real_cuMemFreeAsync_ptsz);
}

BM_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s)
{
    NEED_CU(cuMemAllocFromPoolAsync);
    return alloc_async(dptr, n, pool, s, 1, NULL, real_cuMemAllocFromPoolAsync, real_cuMemFreeAsync);
}

BM_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s)
{
    NEED_CU(cuMemAllocFromPoolAsync_ptsz);
    return alloc_async(dptr, n, pool, s, 1, NULL, real_cuMemAllocFromPoolAsync_ptsz, real_cuMemFreeAsync_ptsz);
}

/* Async frees of pool memory go back to the pool (charged until trimmed); a cuMemAlloc pointer
 * freed this way is given back like cuMemFree. */
BM_EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s)
{
    NEED_CU(cuMemFreeAsync);
    FREE_TRACKED(T_DEV, p, real_cuMemFreeAsync(p, s));
}

BM_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s)
{
    NEED_CU(cuMemFreeAsync_ptsz);
    FREE_TRACKED(T_DEV, p, real_cuMemFreeAsync_ptsz(p, s));
}

BM_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep)
{
    NEED_CU(cuMemPoolTrimTo);
    CUresult r = real_cuMemPoolTrimTo(pool, keep);
    if (r == CUDA_SUCCESS)
        pool_sync(pool_rec(pool, 0));
    return r;
}

BM_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    NEED_CU(cuMemPoolDestroy);
    CUresult r = real_cuMemPoolDestroy(pool);
    struct pool_rec *rec = r == CUDA_SUCCESS ? pool_rec(pool, 0) : NULL;
    if (rec) {
        uncharge(atomic_exchange(&rec->charged, 0));
        atomic_store(&rec->pool, 0); /* may orphan a probe chain: the record table is tiny, tolerable */
    }
    return r;
}

/* ---- queries ------------------------------------------------------------------------------------------ */

/* The one formula every query reports: total = min(cap, device total); free = what the shim would
 * grant right now: min(cap - committed, MemAvailable - floor) on unified memory, min(cap -
 * committed, driver free) on a discrete GPU. */
static void report(uint64_t drv_free, uint64_t drv_total, int unified, uint64_t *out_free, uint64_t *out_total)
{
    if (!atomic_load_explicit(&g_slot, memory_order_acquire))
        join(drv_total);
    uint64_t cap = atomic_load_explicit(&g_slot, memory_order_acquire) ? g_cap : BM_NO_CAP;
    uint64_t committed = 0;
    if (g_ledger && atomic_load(&g_slot)) {
        uint64_t now = bm_now_coarse_ns();
        uint64_t last = atomic_load(&g_last_reclaim);
        if (now - last >= RECLAIM_EVERY_NS && atomic_compare_exchange_strong(&g_last_reclaim, &last, now))
            bm_ledger_reclaim(g_ledger);
        pools_sync_all();
        committed = committed_now();
    }
    uint64_t avail = drv_free, floor = 0;
    if (unified) {
        if (meminfo_refresh(0)) {
            avail = atomic_load(&snap_avail);
            floor = g_floor;
        } else {
            warn_once(8, "cannot read meminfo; reporting the driver's free memory");
        }
    }
    uint64_t total = cap < drv_total ? cap : drv_total;
    *out_total = total;
    *out_free = baldr_memcap_free_figure(cap, committed, avail, floor, total);
}

BM_EXPORT CUresult cuMemGetInfo_v2(size_t *free, size_t *total)
{
    NEED_CU(cuMemGetInfo_v2);
    size_t f = 0, t = 0;
    if (!free || !total)
        return real_cuMemGetInfo_v2(free, total);
    CUresult r = real_cuMemGetInfo_v2(&f, &t);
    if (r != CUDA_SUCCESS)
        return r;
    uint64_t of, ot;
    device_total(t);
    report(f, t, is_unified(), &of, &ot);
    *free = of;
    *total = ot;
    return r;
}

static unsigned int clamp32(uint64_t v) { return v > 0xffffffffu ? 0xffffffffu : (unsigned int)v; }

BM_EXPORT CUresult cuMemGetInfo(unsigned int *free, unsigned int *total)
{
    NEED_CU(cuMemGetInfo);
    size_t f = 0, t = 0;
    if (!free || !total || !real_cuMemGetInfo_v2)
        return real_cuMemGetInfo(free, total);
    CUresult r = real_cuMemGetInfo_v2(&f, &t);
    if (r != CUDA_SUCCESS)
        return r;
    uint64_t of, ot;
    device_total(t);
    report(f, t, is_unified(), &of, &ot);
    *free = clamp32(of);
    *total = clamp32(ot);
    return r;
}

static uint64_t capped_total(uint64_t t)
{
    if (!atomic_load_explicit(&g_slot, memory_order_acquire))
        join(t);
    device_total(t);
    uint64_t cap = atomic_load(&g_slot) ? g_cap : BM_NO_CAP;
    return cap < t ? cap : t;
}

BM_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    NEED_CU(cuDeviceTotalMem_v2);
    CUresult r = real_cuDeviceTotalMem_v2(bytes, dev);
    if (r == CUDA_SUCCESS && bytes)
        *bytes = capped_total(*bytes);
    return r;
}

BM_EXPORT CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    NEED_CU(cuDeviceTotalMem);
    size_t t = 0;
    if (!bytes || !real_cuDeviceTotalMem_v2)
        return real_cuDeviceTotalMem(bytes, dev);
    CUresult r = real_cuDeviceTotalMem_v2(&t, dev);
    if (r == CUDA_SUCCESS)
        *bytes = clamp32(capped_total(t));
    return r;
}

/* NVML has no notion of our cap, and on GB10 it answers NOT_SUPPORTED for memory: we synthesise
 * the same figures cuMemGetInfo gives. Without CUDA initialised, MemTotal stands in for the
 * device total (on an integrated GPU the driver reports about that). */
static int nvml_unified(nvmlReturn_t r)
{
    if (bm_cfg.unified != BM_UNIFIED_AUTO)
        return bm_cfg.unified == BM_UNIFIED_ON;
    /* Ask CUDA only if the program has loaded it: an NVML-only tool must not get libcuda. */
    if (!real_cuDeviceGetAttribute && dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD))
        pthread_once(&cu_once, resolve_cu);
    is_unified();
    int u = atomic_load(&g_unified);
    return u >= 0 ? u : r == NVML_ERROR_NOT_SUPPORTED; /* NOT_SUPPORTED is GB10's own tell */
}

static int nvml_figures(nvmlReturn_t r, unsigned long long drv_free, unsigned long long drv_total,
                        uint64_t *of, uint64_t *ot)
{
    int unified = nvml_unified(r);
    if (r != NVML_SUCCESS) {
        if (r != NVML_ERROR_NOT_SUPPORTED || !unified)
            return 0;
        drv_total = device_total(0);
        if (!drv_total && meminfo_refresh(0))
            drv_total = atomic_load(&snap_total);
        if (!drv_total)
            return 0;
        drv_free = drv_total;
    }
    report(drv_free, drv_total, unified, of, ot);
    return 1;
}

BM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m)
{
    if (BM_UNLIKELY(!real_nvmlDeviceGetMemoryInfo)) {
        pthread_once(&nvml_once, resolve_nvml);
        if (!real_nvmlDeviceGetMemoryInfo)
            return NVML_ERROR_NOT_SUPPORTED;
    }
    nvmlMemory_t mine = {0, 0, 0};
    if (!m)
        return real_nvmlDeviceGetMemoryInfo(d, m);
    nvmlReturn_t r = real_nvmlDeviceGetMemoryInfo(d, &mine);
    uint64_t f, t;
    if (!nvml_figures(r, mine.free, mine.total, &f, &t))
        return r;
    m->total = t;
    m->free = f;
    m->used = t - f;
    return NVML_SUCCESS;
}

BM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m)
{
    if (BM_UNLIKELY(!real_nvmlDeviceGetMemoryInfo_v2)) {
        pthread_once(&nvml_once, resolve_nvml);
        if (!real_nvmlDeviceGetMemoryInfo_v2)
            return NVML_ERROR_NOT_SUPPORTED;
    }
    if (!m)
        return real_nvmlDeviceGetMemoryInfo_v2(d, m);
    nvmlMemory_v2_t mine = {m->version, 0, 0, 0, 0};
    nvmlReturn_t r = real_nvmlDeviceGetMemoryInfo_v2(d, &mine);
    uint64_t f, t;
    if (!nvml_figures(r, mine.free, mine.total, &f, &t))
        return r;
    m->version = NVML_MEMORY_V2;
    m->total = t;
    m->reserved = r == NVML_SUCCESS ? mine.reserved : 0;
    m->free = f;
    m->used = t - f - (m->reserved < t - f ? m->reserved : t - f);
    return NVML_SUCCESS;
}

/* ---- cuGetProcAddress ------------------------------------------------------------------------------- */

BM_EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags)
{
    NEED_CU(cuGetProcAddress);
    CUresult r = real_cuGetProcAddress(sym, pfn, ver, flags);
    if (r == CUDA_SUCCESS && pfn && *pfn)
        *pfn = substitute(cu_hooks, NHOOKS(cu_hooks), *pfn);
    return r;
}

BM_EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                       CUdriverProcAddressQueryResult *status)
{
    NEED_CU(cuGetProcAddress_v2);
    CUresult r = real_cuGetProcAddress_v2(sym, pfn, ver, flags, status);
    if (r == CUDA_SUCCESS && pfn && *pfn)
        *pfn = substitute(cu_hooks, NHOOKS(cu_hooks), *pfn);
    return r;
}

/* ---- load and fork ------------------------------------------------------------------------------------ */

static void after_fork_child(void)
{
    /* The child starts with no CUDA memory of its own: a new slot on first use, empty tables. */
    atomic_store(&g_slot, NULL);
    pthread_mutex_init(&g_join_lock, NULL);
    for (int t = 0; t < T_COUNT; t++)
        if (g_tab[t])
            madvise(g_tab[t], TABLE_SIZE * sizeof(struct entry), MADV_DONTNEED);
    memset(g_pools, 0, sizeof g_pools);
    atomic_flag_clear(&snap_busy);
    atomic_store(&g_last_reclaim, 0);
}

__attribute__((constructor)) static void memcap_init(void)
{
    if (!real_dlsym)
        find_real_dlsym();
    /* Preloaded (or linked), our exports are in the program's global scope; loaded by dlopen as a
     * library (baldr_ops.shim through cffi) they are not, and we must not act as the shim. */
    void *self = dlopen(NULL, RTLD_LAZY);
    passive = !self || real_dlsym(self, "baldr_memcap_parse_size") != (void *)baldr_memcap_parse_size;
    bm_config_load(passive);
    if (passive)
        return;
    g_meminfo_fd = bm_meminfo_open();
    if (g_meminfo_fd < 0 && strcmp(bm_cfg.meminfo_path, "/proc/meminfo") != 0) {
        char msg[400];
        snprintf(msg, sizeof msg, "BALDR_MEMCAP_MEMINFO: cannot open \"%s\" (%s); unified-memory figures will come from the driver",
                 bm_cfg.meminfo_path, strerror(errno));
        bm_say(msg);
    }
    pthread_atfork(NULL, NULL, after_fork_child);
    /* Linked against the driver: resolve now. Otherwise on the first dlsym for a name we wrap. */
    if (dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD))
        pthread_once(&cu_once, resolve_cu);
    if (dlopen("libnvidia-ml.so.1", RTLD_LAZY | RTLD_NOLOAD))
        pthread_once(&nvml_once, resolve_nvml);
}
