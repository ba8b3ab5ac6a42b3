/* A fake libcuda.so.1 that behaves like a GB10 for the shim's tests and for MAX's device creation:
 * integrated = 1, cuMemGetInfo's free is MemFree of a (redirectable) meminfo file, PCI ids match the
 * fake NVML. Device memory is address space only (never touched), except the VMM path MAX uses,
 * which maps real pages. Build with -Wl,-Bsymbolic so the fake's own references stay inside it,
 * as the real driver's do.
 *
 * Environment: FAKE_CUDA_MEMINFO (default /proc/meminfo), FAKE_CUDA_TOTAL (bytes, default 128 GiB),
 * FAKE_CUDA_INTEGRATED (default 1), FAKE_CUDA_STATIC_FREE=1 (read meminfo once, for benchmarks). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))
typedef unsigned long long u64;

enum { C_ALLOC, C_FREE, C_GETINFO, C_CREATE, C_RELEASE, C_HOST, C_FREEHOST, C_REGISTER, C_UNREGISTER,
       C_ASYNC, C_FREEASYNC, C_TRIM, C_COUNT };
static const char *const counter_names[C_COUNT] = {"alloc", "free", "getinfo", "create", "release", "host",
                                                   "freehost", "register", "unregister", "async",
                                                   "freeasync", "trim"};
static _Atomic u64 counters[C_COUNT];
static _Atomic u64 live_bytes; /* everything the fake has handed out and not taken back */

/* Test hooks: how many calls reached the fake, and how much it holds. */
API u64 fakecu_calls(const char *name)
{
    for (int i = 0; i < C_COUNT; i++)
        if (!strcmp(name, counter_names[i]))
            return atomic_load(&counters[i]);
    return ~0ull;
}
API u64 fakecu_live_bytes(void) { return atomic_load(&live_bytes); }

static u64 env_u64(const char *name, u64 dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static u64 total_bytes(void) { return env_u64("FAKE_CUDA_TOTAL", 128ull << 30); }

static u64 memfree_now(void)
{
    const char *path = getenv("FAKE_CUDA_MEMINFO");
    char buf[8192];
    int fd = open(path && *path ? path : "/proc/meminfo", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strstr(buf, "MemFree:");
    return p ? strtoull(p + 8, NULL, 10) * 1024 : 0;
}

/* Device pointers: a 16 MiB-strided window of address space, sizes kept per index. */
#define DEV_BASE 0x200000000000ull
#define DEV_SLOTS (1u << 20)
static _Atomic u64 dev_next;
static _Atomic u64 dev_size[DEV_SLOTS];

/* Claim a free index (a thread stalled while holding one must not see it reused). */
static __thread u64 last_freed = ~0ull; /* like a real allocator, hand a freed range out again */

static u64 claim_index(_Atomic u64 *sizes, u64 n)
{
    u64 zero = 0;
    if (last_freed != ~0ull && atomic_compare_exchange_strong(&sizes[last_freed], &zero, n)) {
        u64 idx = last_freed;
        last_freed = ~0ull;
        return idx;
    }
    for (;;) {
        u64 idx = atomic_fetch_add(&dev_next, 1) % DEV_SLOTS, zero = 0;
        if (atomic_compare_exchange_strong(&sizes[idx], &zero, n))
            return idx;
    }
}

static _Atomic u64 async_size[DEV_SLOTS];

static u64 dev_alloc(u64 n)
{
    u64 idx;
    for (;;) { /* device and pool allocations share the address window */
        idx = claim_index(dev_size, n);
        if (!atomic_load(&async_size[idx])) break;
        atomic_store(&dev_size[idx], 0);
    }
    atomic_fetch_add(&live_bytes, n);
    return DEV_BASE + (idx << 24);
}

static int dev_free(u64 p)
{
    if (p < DEV_BASE || p >= DEV_BASE + ((u64)DEV_SLOTS << 24) || (p & ((1u << 24) - 1)))
        return 1; /* CUDA_ERROR_INVALID_VALUE */
    u64 n = atomic_exchange(&dev_size[(p - DEV_BASE) >> 24], 0);
    if (!n)
        return 1;
    last_freed = (p - DEV_BASE) >> 24;
    atomic_fetch_sub(&live_bytes, n);
    return 0;
}

static __thread void *current_ctx;
static int the_ctx;
static int initialised;

API int cuInit(unsigned flags) { (void)flags; initialised = 1; return 0; }
API int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
API int cuDeviceGet(int *d, int ordinal) { if (ordinal) return 101; *d = 0; return 0; }
API int cuDeviceGetCount(int *n) { *n = 1; return 0; }
API int cuDeviceGetName(char *name, int len, int dev) { (void)dev; snprintf(name, (size_t)len, "NVIDIA GB10"); return 0; }
API int cuDeviceGetAttribute(int *v, int attr, int dev)
{
    (void)dev;
    switch (attr) {
    case 18: *v = (int)env_u64("FAKE_CUDA_INTEGRATED", 1); break; /* INTEGRATED */
    case 50: *v = 0xF; break;  /* PCI domain: must match the fake NVML */
    case 33: *v = 1; break;    /* PCI bus */
    case 34: *v = 0; break;    /* PCI device */
    case 14: *v = 512; break;  /* texture alignment */
    case 75: *v = 12; break;
    case 76: *v = 1; break;
    case 103: *v = 1; break;   /* POSIX fd handles */
    case 16: *v = 48; break;   /* multiprocessors */
    default: *v = 0;
    }
    return 0;
}
API int cuDeviceTotalMem_v2(size_t *b, int dev) { (void)dev; if (!initialised) return 3; *b = total_bytes(); return 0; }
API int cuDeviceTotalMem(unsigned *b, int dev) { (void)dev; u64 t = total_bytes(); *b = t > 0xffffffffu ? 0xffffffffu : (unsigned)t; return 0; }
API int cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = &the_ctx; return 0; }
API int cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; return 0; }
API int cuCtxCreate_v2(void **ctx, unsigned f, int dev) { (void)f; (void)dev; *ctx = &the_ctx; current_ctx = &the_ctx; return 0; }
API int cuCtxGetCurrent(void **ctx) { *ctx = current_ctx; return 0; }
API int cuCtxSetCurrent(void *ctx) { current_ctx = ctx; return 0; }
API int cuCtxPushCurrent(void *ctx) { current_ctx = ctx; return 0; }
API int cuCtxPopCurrent(void **ctx) { if (ctx) *ctx = current_ctx; current_ctx = NULL; return 0; }
API int cuCtxGetDevice(int *d) { if (!current_ctx) return 201; *d = 0; return 0; }
API int cuCtxSynchronize(void) { return 0; }

static u64 static_free;
API int cuMemGetInfo_v2(size_t *f, size_t *t)
{
    atomic_fetch_add(&counters[C_GETINFO], 1);
    if (!f || !t)
        return 1;
    if (!current_ctx)
        return 201; /* CUDA_ERROR_INVALID_CONTEXT */
    if (getenv("FAKE_CUDA_STATIC_FREE")) {
        if (!static_free)
            static_free = memfree_now();
        *f = static_free;
    } else {
        *f = memfree_now();
    }
    *t = total_bytes();
    return 0;
}
API int cuMemGetInfo(unsigned *f, unsigned *t)
{
    size_t a, b;
    int r = cuMemGetInfo_v2(&a, &b);
    if (!r) { *f = a > 0xffffffffu ? 0xffffffffu : (unsigned)a; *t = b > 0xffffffffu ? 0xffffffffu : (unsigned)b; }
    return r;
}

API int cuMemAlloc_v2(u64 *p, size_t n)
{
    atomic_fetch_add(&counters[C_ALLOC], 1);
    if (!p || !n) return 1;
    *p = dev_alloc(n);
    return 0;
}
API int cuMemAlloc(unsigned *p, unsigned n) { (void)p; (void)n; return 1; } /* the 32-bit v1: unused */
API int cuMemFree_v2(u64 p) { atomic_fetch_add(&counters[C_FREE], 1); return dev_free(p); }
API int cuMemFree(unsigned p) { (void)p; return 1; }
API int cuMemAllocManaged(u64 *p, size_t n, unsigned flags) { (void)flags; return cuMemAlloc_v2(p, n); }
API int cuMemAllocPitch_v2(u64 *p, size_t *pitch, size_t w, size_t h, unsigned elem)
{
    (void)elem;
    if (!p || !pitch || !w || !h) return 1;
    size_t pw = (w + 127) & ~(size_t)127; /* 128-byte pitch, like most GPUs */
    *pitch = pw;
    return cuMemAlloc_v2(p, pw * h);
}

/* Host memory is real (programs write to pinned buffers): mmap with a header page for the size. */
static void *host_alloc(size_t n)
{
    char *m = mmap(NULL, n + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return NULL;
    *(size_t *)m = n;
    atomic_fetch_add(&live_bytes, n);
    return m + 4096;
}
API int cuMemAllocHost_v2(void **pp, size_t n) { atomic_fetch_add(&counters[C_HOST], 1); if (!pp || !n) return 1; *pp = host_alloc(n); return *pp ? 0 : 2; }
API int cuMemHostAlloc(void **pp, size_t n, unsigned f) { (void)f; return cuMemAllocHost_v2(pp, n); }
API int cuMemFreeHost(void *p)
{
    atomic_fetch_add(&counters[C_FREEHOST], 1);
    if (!p) return 1;
    char *m = (char *)p - 4096;
    size_t n = *(size_t *)m;
    atomic_fetch_sub(&live_bytes, n);
    munmap(m, n + 4096);
    return 0;
}
#define REGS 1024
static struct { _Atomic(uintptr_t) p; size_t n; } regs[REGS];
API int cuMemHostRegister_v2(void *p, size_t n, unsigned f)
{
    (void)f;
    atomic_fetch_add(&counters[C_REGISTER], 1);
    for (int i = 0; i < REGS; i++) {
        uintptr_t z = 0;
        if (atomic_compare_exchange_strong(&regs[i].p, &z, (uintptr_t)p)) { regs[i].n = n; atomic_fetch_add(&live_bytes, n); return 0; }
    }
    return 2;
}
API int cuMemHostUnregister(void *p)
{
    atomic_fetch_add(&counters[C_UNREGISTER], 1);
    for (int i = 0; i < REGS; i++) {
        uintptr_t q = (uintptr_t)p;
        if (p && atomic_load(&regs[i].p) == q) { atomic_fetch_sub(&live_bytes, regs[i].n); atomic_store(&regs[i].p, 0); return 0; }
    }
    return 712; /* CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED */
}

/* VMM: handles are counters; address ranges are real PROT_NONE reservations made usable on map. */
static _Atomic u64 next_handle = 0x1000;
#define HANDLES 4096
static _Atomic u64 handle_size[HANDLES];
API int cuMemCreate(u64 *h, size_t n, const void *prop, u64 flags)
{
    (void)prop; (void)flags;
    atomic_fetch_add(&counters[C_CREATE], 1);
    if (!h || !n) return 1;
    u64 id, zero;
    do { /* skip slots still held: handles are slot numbers plus a multiple of HANDLES */
        id = atomic_fetch_add(&next_handle, 1);
        zero = 0;
    } while (!atomic_compare_exchange_strong(&handle_size[id % HANDLES], &zero, n));
    atomic_fetch_add(&live_bytes, n);
    *h = id;
    return 0;
}
API int cuMemRelease(u64 h)
{
    atomic_fetch_add(&counters[C_RELEASE], 1);
    u64 n = atomic_exchange(&handle_size[h % HANDLES], 0);
    if (!n) return 1;
    atomic_fetch_sub(&live_bytes, n);
    return 0;
}
API int cuMemAddressReserve(u64 *p, size_t n, size_t align, u64 addr, u64 flags)
{
    (void)align; (void)addr; (void)flags;
    void *m = mmap(NULL, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return 2;
    *p = (u64)(uintptr_t)m;
    return 0;
}
API int cuMemAddressFree(u64 p, size_t n) { munmap((void *)(uintptr_t)p, n); return 0; }
API int cuMemMap(u64 p, size_t n, size_t off, u64 h, u64 flags) { (void)off; (void)h; (void)flags; return mprotect((void *)(uintptr_t)p, n, PROT_READ | PROT_WRITE) ? 1 : 0; }
API int cuMemUnmap(u64 p, size_t n) { madvise((void *)(uintptr_t)p, n, MADV_DONTNEED); mprotect((void *)(uintptr_t)p, n, PROT_NONE); return 0; }
API int cuMemSetAccess(u64 p, size_t n, const void *d, size_t c) { (void)p; (void)n; (void)d; (void)c; return 0; }
API int cuMemGetAllocationGranularity(size_t *g, const void *prop, int opt) { (void)prop; (void)opt; *g = 2u << 20; return 0; }

/* Pools: a pool keeps what it reserved until trimmed (release threshold "infinite", as PyTorch
 * sets it), growing in 2 MiB steps. */
struct pool { _Atomic u64 reserved, used; };
static struct pool default_pool;
static _Atomic(struct pool *) async_pool[DEV_SLOTS];
API int cuDeviceGetMemPool(void **pool, int dev) { (void)dev; *pool = &default_pool; return 0; }
API int cuDeviceGetDefaultMemPool(void **pool, int dev) { return cuDeviceGetMemPool(pool, dev); }
API int cuMemPoolCreate(void **pool, const void *props) { (void)props; *pool = calloc(1, sizeof(struct pool)); return 0; }
API int cuMemPoolDestroy(void *pool) { struct pool *p = pool; atomic_fetch_sub(&live_bytes, atomic_load(&p->reserved)); if (p != &default_pool) free(p); return 0; }
API int cuMemPoolGetAttribute(void *pool, int attr, void *value)
{
    struct pool *p = pool;
    if (attr == 5) *(u64 *)value = atomic_load(&p->reserved);     /* RESERVED_MEM_CURRENT */
    else if (attr == 7) *(u64 *)value = atomic_load(&p->used);    /* USED_MEM_CURRENT */
    else *(u64 *)value = 0;
    return 0;
}
API int cuMemPoolSetAttribute(void *pool, int attr, void *value) { (void)pool; (void)attr; (void)value; return 0; }
API int cuMemPoolTrimTo(void *pool, size_t keep)
{
    struct pool *p = pool;
    atomic_fetch_add(&counters[C_TRIM], 1);
    u64 used = atomic_load(&p->used), res = atomic_load(&p->reserved);
    u64 target = used > keep ? (used + (2u << 20) - 1) & ~(u64)((2u << 20) - 1) : keep;
    if (target < res) { atomic_store(&p->reserved, target); atomic_fetch_sub(&live_bytes, res - target); }
    return 0;
}
static int pool_alloc(u64 *dptr, size_t n, struct pool *p)
{
    atomic_fetch_add(&counters[C_ASYNC], 1);
    if (!dptr || !n) return 1;
    u64 used = atomic_fetch_add(&p->used, n) + n;
    u64 res = atomic_load(&p->reserved);
    while (used > res) {
        u64 grown = (used + (2u << 20) - 1) & ~(u64)((2u << 20) - 1);
        if (atomic_compare_exchange_weak(&p->reserved, &res, grown)) { atomic_fetch_add(&live_bytes, grown - res); break; }
    }
    u64 idx;
    for (;;) { /* an index free in both tables: frees look in the async one first */
        idx = claim_index(async_size, n);
        if (!atomic_load(&dev_size[idx])) break;
        atomic_store(&async_size[idx], 0);
    }
    atomic_store(&async_pool[idx], p);
    *dptr = DEV_BASE + (idx << 24);
    return 0;
}
API int cuMemAllocAsync(u64 *d, size_t n, void *s) { (void)s; return pool_alloc(d, n, &default_pool); }
API int cuMemAllocAsync_ptsz(u64 *d, size_t n, void *s) { (void)s; return pool_alloc(d, n, &default_pool); }
API int cuMemAllocFromPoolAsync(u64 *d, size_t n, void *pool, void *s) { (void)s; return pool_alloc(d, n, pool); }
API int cuMemAllocFromPoolAsync_ptsz(u64 *d, size_t n, void *pool, void *s) { (void)s; return pool_alloc(d, n, pool); }
API int cuMemFreeAsync(u64 p, void *s)
{
    (void)s;
    atomic_fetch_add(&counters[C_FREEASYNC], 1);
    if (p < DEV_BASE) return 1;
    u64 idx = (p - DEV_BASE) >> 24;
    if (idx >= DEV_SLOTS) return 1;
    u64 n = atomic_exchange(&async_size[idx], 0);
    if (!n) return dev_free(p); /* a cuMemAlloc pointer freed stream-ordered */
    atomic_fetch_sub(&atomic_load(&async_pool[idx])->used, n);
    return 0;
}
API int cuMemFreeAsync_ptsz(u64 p, void *s) { return cuMemFreeAsync(p, s); }

/* Everything else MAX's device creation and teardown touch. */
static int the_stream, the_event;
API int cuStreamCreate(void **s, unsigned f) { (void)f; *s = &the_stream; return 0; }
API int cuStreamCreateWithPriority(void **s, unsigned f, int p) { (void)f; (void)p; *s = &the_stream; return 0; }
API int cuStreamDestroy(void *s) { (void)s; return 0; }
API int cuStreamSynchronize(void *s) { (void)s; return 0; }
API int cuStreamIsCapturing(void *s, int *st) { (void)s; *st = 0; return 0; }
API int cuEventCreate(void **e, unsigned f) { (void)f; *e = &the_event; return 0; }
API int cuEventRecord(void *e, void *s) { (void)e; (void)s; return 0; }
API int cuEventQuery(void *e) { (void)e; return 0; }
API int cuEventSynchronize(void *e) { (void)e; return 0; }
API int cuEventDestroy(void *e) { (void)e; return 0; }
API int cuDeviceGetGraphMemAttribute(int dev, int attr, void *v) { (void)dev; (void)attr; *(u64 *)v = 0; return 0; }
API int cuCtxGetStreamPriorityRange(int *lo, int *hi) { *lo = 0; *hi = -5; return 0; }
API int cuMemcpyHtoD_v2(u64 d, const void *h, size_t n) { (void)d; (void)h; (void)n; return 0; }
API int cuMemcpyDtoH_v2(void *h, u64 d, size_t n) { (void)d; memset(h, 0, n); return 0; }
API int cuMemcpyHtoDAsync_v2(u64 d, const void *h, size_t n, void *s) { (void)s; return cuMemcpyHtoD_v2(d, h, n); }
API int cuMemcpyDtoHAsync_v2(void *h, u64 d, size_t n, void *s) { (void)s; return cuMemcpyDtoH_v2(h, d, n); }
API int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_FAKE"; return 0; }
API int cuGetErrorString(int e, const char **s) { (void)e; *s = "fake driver error"; return 0; }

/* Names MAX looks up that device creation never calls: present so every dlsym succeeds. */
#define STUB(name) API int name(void) { return 0; }
STUB(cuCtxDestroy) STUB(cuCtxEnablePeerAccess) STUB(cuDeviceCanAccessPeer) STUB(cuDeviceGetP2PAttribute)
STUB(cuEventElapsedTime) STUB(cuFuncGetAttribute) STUB(cuFuncGetParamInfo) STUB(cuFuncSetAttribute)
STUB(cuGraphAddChildGraphNode) STUB(cuGraphAddEmptyNode) STUB(cuGraphAddKernelNode) STUB(cuGraphAddMemcpyNode)
STUB(cuGraphAddMemsetNode) STUB(cuGraphCreate) STUB(cuGraphDebugDotPrint) STUB(cuGraphDestroy)
STUB(cuGraphExecDestroy) STUB(cuGraphInstantiate) STUB(cuGraphInstantiateWithFlags)
STUB(cuGraphInstantiateWithParams) STUB(cuGraphKernelNodeSetAttribute) STUB(cuGraphLaunch)
STUB(cuLaunchHostFunc) STUB(cuLaunchKernel) STUB(cuLaunchKernelEx) STUB(cuMemExportToShareableHandle)
STUB(cuMemGetAddressRange_v2) STUB(cuMemGetHandleForAddressRange) STUB(cuMemHostGetDevicePointer_v2)
STUB(cuMemPoolSetAccess) STUB(cuMemcpyBatch) STUB(cuMemcpyBatchAsync) STUB(cuMemcpyDtoD)
STUB(cuMemcpyDtoDAsync_v2) STUB(cuMemcpyDtoD_v2) STUB(cuMemcpyPeer) STUB(cuMemcpyPeerAsync)
STUB(cuMemsetD16Async) STUB(cuMemsetD16_v2) STUB(cuMemsetD2D32Async) STUB(cuMemsetD2D32_v2)
STUB(cuMemsetD32Async) STUB(cuMemsetD32_v2) STUB(cuMemsetD8Async) STUB(cuMemsetD8_v2)
STUB(cuModuleGetFunction) STUB(cuModuleGetGlobal_v2) STUB(cuModuleLoadDataEx) STUB(cuModuleUnload)
STUB(cuMulticastAddDevice) STUB(cuMulticastBindMem) STUB(cuMulticastCreate) STUB(cuMulticastGetGranularity)
STUB(cuMulticastUnbind) STUB(cuOccupancyMaxActiveBlocksPerMultiprocessor) STUB(cuPointerGetAttributes)
STUB(cuPointerSetAttribute) STUB(cuStreamBeginCapture) STUB(cuStreamEndCapture) STUB(cuStreamGetCaptureInfo_v2)
STUB(cuStreamWaitEvent) STUB(cuStreamWaitValue64_v2) STUB(cuTensorMapEncodeIm2col) STUB(cuTensorMapEncodeTiled)

/* cuGetProcAddress resolves against the fake's own table (never dlsym, which the shim hooks):
 * the per-thread-stream flag picks a _ptsz variant, a version >= 3.2 picks _v2 where one exists,
 * and cuGetProcAddress itself is _v2 from 12.0. */
int cuGetProcAddress_v2(const char *sym, void **pfn, int ver, u64 flags, int *status);
API int cuGetProcAddress(const char *sym, void **pfn, int ver, u64 flags);
#define FN(name) {#name, (void *)name},
static const struct { const char *name; void *fn; } table[] = {
    FN(cuMemAlloc) FN(cuMemAlloc_v2) FN(cuMemFree) FN(cuMemFree_v2) FN(cuMemGetInfo) FN(cuMemGetInfo_v2)
    FN(cuMemAllocAsync) FN(cuMemAllocAsync_ptsz) FN(cuMemAllocFromPoolAsync) FN(cuMemAllocFromPoolAsync_ptsz)
    FN(cuMemFreeAsync) FN(cuMemFreeAsync_ptsz) FN(cuMemCreate) FN(cuMemRelease) FN(cuMemAllocHost_v2)
    FN(cuMemHostAlloc) FN(cuMemFreeHost) FN(cuMemHostRegister_v2) FN(cuMemHostUnregister)
    FN(cuMemAllocPitch_v2) FN(cuMemAllocManaged) FN(cuDeviceTotalMem) FN(cuDeviceTotalMem_v2)
    FN(cuGetProcAddress) FN(cuGetProcAddress_v2) FN(cuInit) FN(cuDeviceGet) FN(cuDevicePrimaryCtxRetain)
    FN(cuCtxSetCurrent) FN(cuCtxGetDevice) FN(cuMemPoolTrimTo) FN(cuMemPoolCreate) FN(cuMemPoolDestroy)
    FN(cuDeviceGetMemPool) FN(cuMemPoolGetAttribute) FN(cuDeviceGetAttribute)
};

static void *lookup(const char *name)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(table[i].name, name))
            return table[i].fn;
    return NULL;
}

API int cuGetProcAddress_v2(const char *sym, void **pfn, int ver, u64 flags, int *status)
{
    char name[128];
    void *fn = NULL;
    if (!strcmp(sym, "cuGetProcAddress"))
        fn = lookup(ver >= 12000 ? "cuGetProcAddress_v2" : "cuGetProcAddress");
    if (!fn && (flags & 2)) {
        snprintf(name, sizeof name, "%s_ptsz", sym);
        fn = lookup(name);
    }
    if (!fn && ver >= 3020) {
        snprintf(name, sizeof name, "%s_v2", sym);
        fn = lookup(name);
    }
    if (!fn)
        fn = lookup(sym);
    *pfn = fn;
    if (status)
        *status = fn ? 0 : 1; /* CU_GET_PROC_ADDRESS_SUCCESS / SYMBOL_NOT_FOUND */
    return 0;
}

API int cuGetProcAddress(const char *sym, void **pfn, int ver, u64 flags)
{
    return cuGetProcAddress_v2(sym, pfn, ver, flags, NULL);
}
