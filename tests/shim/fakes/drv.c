/* Test driver: runs a small script of driver calls given on the command line and prints one line
 * per step, so the Python tests can assert on what the shim did.
 *
 *   drv ROUTE STEP...        ROUTE: link | dlsym | gpa | gpa_v2 | gpa_ptds | gpa_legacy
 *
 * Built twice: with -DLINK against the fake libcuda (route "link": calls go through the dynamic
 * linker, where a preload wins) and without (routes that find the driver at run time). Steps:
 *   init | alloc KIND SIZE | free ID | info | hold | waitfile PATH | fill KIND SIZE |
 *   threads N KIND SIZE ITERS | threadfill N KIND SIZE | forkalloc KIND SIZE | trim |
 *   where NAME | gpacheck SYMBOL VERSION FLAGS | setavail PATH BYTES | freebogus | live | exit CODE
 * KIND: dev pitch managed host hostalloc register async pool vmm. SIZE takes K/M/G suffixes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

typedef unsigned long long u64;
typedef int (*fn_alloc)(u64 *, size_t);
typedef int (*fn_free)(u64);

static struct {
    int (*Init)(unsigned);
    int (*PrimaryCtxRetain)(void **, int);
    int (*CtxSetCurrent)(void *);
    int (*MemAlloc)(u64 *, size_t);
    int (*MemFree)(u64);
    int (*MemAllocPitch)(u64 *, size_t *, size_t, size_t, unsigned);
    int (*MemAllocManaged)(u64 *, size_t, unsigned);
    int (*MemAllocHost)(void **, size_t);
    int (*MemHostAlloc)(void **, size_t, unsigned);
    int (*MemFreeHost)(void *);
    int (*MemHostRegister)(void *, size_t, unsigned);
    int (*MemHostUnregister)(void *);
    int (*MemAllocAsync)(u64 *, size_t, void *);
    int (*MemAllocFromPoolAsync)(u64 *, size_t, void *, void *);
    int (*MemFreeAsync)(u64, void *);
    int (*MemPoolCreate)(void **, const void *);
    int (*MemPoolTrimTo)(void *, size_t);
    int (*DeviceGetMemPool)(void **, int);
    int (*MemCreate)(u64 *, size_t, const void *, u64);
    int (*MemRelease)(u64);
    int (*MemGetInfo_v2)(size_t *, size_t *);
    int (*MemGetInfo)(unsigned *, unsigned *);
    int (*DeviceTotalMem_v2)(size_t *, int);
    int (*DeviceTotalMem)(unsigned *, int);
    int (*GetProcAddress)(const char *, void **, int, u64);
    int (*GetProcAddress_v2)(const char *, void **, int, u64, int *);
    int (*NvmlInit)(void);
    int (*NvmlHandle)(unsigned, void **);
    int (*NvmlMem)(void *, u64 *);
    int (*NvmlMem2)(void *, void *);
} cu;

#ifdef LINK
int cuInit(unsigned);
int cuDevicePrimaryCtxRetain(void **, int);
int cuCtxSetCurrent(void *);
int cuMemAlloc_v2(u64 *, size_t);
int cuMemFree_v2(u64);
int cuMemAllocPitch_v2(u64 *, size_t *, size_t, size_t, unsigned);
int cuMemAllocManaged(u64 *, size_t, unsigned);
int cuMemAllocHost_v2(void **, size_t);
int cuMemHostAlloc(void **, size_t, unsigned);
int cuMemFreeHost(void *);
int cuMemHostRegister_v2(void *, size_t, unsigned);
int cuMemHostUnregister(void *);
int cuMemAllocAsync(u64 *, size_t, void *);
int cuMemAllocFromPoolAsync(u64 *, size_t, void *, void *);
int cuMemFreeAsync(u64, void *);
int cuMemPoolCreate(void **, const void *);
int cuMemPoolTrimTo(void *, size_t);
int cuDeviceGetMemPool(void **, int);
int cuMemCreate(u64 *, size_t, const void *, u64);
int cuMemRelease(u64);
int cuMemGetInfo_v2(size_t *, size_t *);
int cuMemGetInfo(unsigned *, unsigned *);
int cuDeviceTotalMem_v2(size_t *, int);
int cuDeviceTotalMem(unsigned *, int);
int cuGetProcAddress(const char *, void **, int, u64);
int cuGetProcAddress_v2(const char *, void **, int, u64, int *);
int nvmlInit_v2(void);
int nvmlDeviceGetHandleByIndex(unsigned, void **);
int nvmlDeviceGetMemoryInfo(void *, u64 *);
int nvmlDeviceGetMemoryInfo_v2(void *, void *);

static void bind_link(void)
{
    cu.Init = cuInit; cu.PrimaryCtxRetain = cuDevicePrimaryCtxRetain; cu.CtxSetCurrent = cuCtxSetCurrent;
    cu.MemAlloc = cuMemAlloc_v2; cu.MemFree = cuMemFree_v2; cu.MemAllocPitch = cuMemAllocPitch_v2;
    cu.MemAllocManaged = cuMemAllocManaged; cu.MemAllocHost = cuMemAllocHost_v2; cu.MemHostAlloc = cuMemHostAlloc;
    cu.MemFreeHost = cuMemFreeHost; cu.MemHostRegister = cuMemHostRegister_v2; cu.MemHostUnregister = cuMemHostUnregister;
    cu.MemAllocAsync = cuMemAllocAsync; cu.MemAllocFromPoolAsync = cuMemAllocFromPoolAsync;
    cu.MemFreeAsync = cuMemFreeAsync; cu.MemPoolCreate = cuMemPoolCreate; cu.MemPoolTrimTo = cuMemPoolTrimTo;
    cu.DeviceGetMemPool = cuDeviceGetMemPool; cu.MemCreate = cuMemCreate; cu.MemRelease = cuMemRelease;
    cu.MemGetInfo_v2 = cuMemGetInfo_v2; cu.MemGetInfo = cuMemGetInfo; cu.DeviceTotalMem_v2 = cuDeviceTotalMem_v2;
    cu.DeviceTotalMem = cuDeviceTotalMem; cu.GetProcAddress = cuGetProcAddress; cu.GetProcAddress_v2 = cuGetProcAddress_v2;
    cu.NvmlInit = nvmlInit_v2; cu.NvmlHandle = nvmlDeviceGetHandleByIndex; cu.NvmlMem = nvmlDeviceGetMemoryInfo;
    cu.NvmlMem2 = nvmlDeviceGetMemoryInfo_v2;
}
#endif

#ifndef LINK
static void *hcuda, *hnvml;

/* Route "dlsym": every name through dlsym(handle). Routes "gpa*": only cuGetProcAddress comes from
 * dlsym; everything else from it, with the version and flags the route names. */
static void bind_runtime(const char *route)
{
    hcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    hnvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!hcuda || !hnvml) {
        printf("error dlopen %s\n", dlerror());
        exit(3);
    }
    int use_gpa = strncmp(route, "gpa", 3) == 0;
    int ver = strcmp(route, "gpa_legacy") == 0 ? 11030 : 12000;
    u64 flags = strcmp(route, "gpa_ptds") == 0 ? 2 : 0;
    cu.GetProcAddress = dlsym(hcuda, "cuGetProcAddress");
    cu.GetProcAddress_v2 = dlsym(hcuda, "cuGetProcAddress_v2");
#define GET(field, base, versioned)                                                                     \
    do {                                                                                                \
        void *p_ = NULL;                                                                                \
        if (!use_gpa)                                                                                   \
            p_ = dlsym(hcuda, versioned);                                                               \
        else if (strcmp(route, "gpa_v2") == 0)                                                          \
            cu.GetProcAddress_v2(base, &p_, ver, flags, NULL);                                          \
        else                                                                                            \
            cu.GetProcAddress(base, &p_, ver, flags);                                                   \
        *(void **)&cu.field = p_;                                                                       \
    } while (0)
    GET(Init, "cuInit", "cuInit");
    GET(PrimaryCtxRetain, "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRetain");
    GET(CtxSetCurrent, "cuCtxSetCurrent", "cuCtxSetCurrent");
    GET(MemAlloc, "cuMemAlloc", "cuMemAlloc_v2");
    GET(MemFree, "cuMemFree", "cuMemFree_v2");
    GET(MemAllocPitch, "cuMemAllocPitch", "cuMemAllocPitch_v2");
    GET(MemAllocManaged, "cuMemAllocManaged", "cuMemAllocManaged");
    GET(MemAllocHost, "cuMemAllocHost", "cuMemAllocHost_v2");
    GET(MemHostAlloc, "cuMemHostAlloc", "cuMemHostAlloc");
    GET(MemFreeHost, "cuMemFreeHost", "cuMemFreeHost");
    GET(MemHostRegister, "cuMemHostRegister", "cuMemHostRegister_v2");
    GET(MemHostUnregister, "cuMemHostUnregister", "cuMemHostUnregister");
    GET(MemAllocAsync, "cuMemAllocAsync", "cuMemAllocAsync");
    GET(MemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync");
    GET(MemFreeAsync, "cuMemFreeAsync", "cuMemFreeAsync");
    GET(MemPoolCreate, "cuMemPoolCreate", "cuMemPoolCreate");
    GET(MemPoolTrimTo, "cuMemPoolTrimTo", "cuMemPoolTrimTo");
    GET(DeviceGetMemPool, "cuDeviceGetMemPool", "cuDeviceGetMemPool");
    GET(MemCreate, "cuMemCreate", "cuMemCreate");
    GET(MemRelease, "cuMemRelease", "cuMemRelease");
    GET(MemGetInfo_v2, "cuMemGetInfo", "cuMemGetInfo_v2");
    GET(DeviceTotalMem_v2, "cuDeviceTotalMem", "cuDeviceTotalMem_v2");
    cu.MemGetInfo = dlsym(hcuda, "cuMemGetInfo");
    cu.DeviceTotalMem = dlsym(hcuda, "cuDeviceTotalMem");
    cu.NvmlInit = dlsym(hnvml, "nvmlInit_v2");
    cu.NvmlHandle = dlsym(hnvml, "nvmlDeviceGetHandleByIndex");
    cu.NvmlMem = dlsym(hnvml, "nvmlDeviceGetMemoryInfo");
    cu.NvmlMem2 = dlsym(hnvml, "nvmlDeviceGetMemoryInfo_v2");
}
#endif

static u64 parse_size(const char *s)
{
    char *end;
    u64 v = strtoull(s, &end, 10);
    switch (*end) {
    case 'K': return v << 10;
    case 'M': return v << 20;
    case 'G': return v << 30;
    default: return v;
    }
}

#define SENTINEL 0xDEADBEEFCAFEull
#define MAXH 4096
static struct { int kind; u64 key; void *host; size_t n; } held[MAXH];
static int nheld;
static void *the_pool;

static const char *const kinds[] = {"dev", "pitch", "managed", "host", "hostalloc", "register", "async", "pool", "vmm", NULL};

static int kind_of(const char *k)
{
    for (int i = 0; kinds[i]; i++)
        if (!strcmp(kinds[i], k))
            return i;
    fprintf(stderr, "unknown kind %s\n", k);
    exit(2);
}

/* One allocation; returns the CUresult. On failure, reports whether the output was left alone. */
static int do_alloc(int kind, u64 n, int *slot, int *untouched)
{
    u64 d = SENTINEL;
    void *h = (void *)(uintptr_t)SENTINEL;
    size_t pitch = SENTINEL;
    int r;
    switch (kind) {
    case 0: r = cu.MemAlloc(&d, n); break;
    case 1: r = cu.MemAllocPitch(&d, &pitch, n / 4, 4, 4); break;
    case 2: r = cu.MemAllocManaged(&d, n, 1); break;
    case 3: r = cu.MemAllocHost(&h, n); break;
    case 4: r = cu.MemHostAlloc(&h, n, 0); break;
    case 5:
        h = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        r = cu.MemHostRegister(h, n, 0);
        if (r)
            munmap(h, n);
        break;
    case 6: r = cu.MemAllocAsync(&d, n, NULL); break;
    case 7:
        if (!the_pool)
            cu.MemPoolCreate(&the_pool, NULL);
        r = cu.MemAllocFromPoolAsync(&d, n, the_pool, NULL);
        break;
    default: r = cu.MemCreate(&d, n, NULL, 0); break;
    }
    *untouched = kind == 5 ? 1 : (kind >= 3 && kind <= 4) ? h == (void *)(uintptr_t)SENTINEL
                                                            : (d == SENTINEL && (kind != 1 || pitch == SENTINEL));
    *slot = -1;
    if (r == 0) {
        int i = __atomic_fetch_add(&nheld, 1, __ATOMIC_RELAXED);
        if (i < MAXH) {
            held[i].kind = kind;
            held[i].key = d;
            held[i].host = h;
            held[i].n = n;
            *slot = i;
        }
    }
    return r;
}

static int do_free(int i)
{
    switch (held[i].kind) {
    case 0: case 1: case 2: return cu.MemFree(held[i].key);
    case 3: case 4: return cu.MemFreeHost(held[i].host);
    case 5: { int r = cu.MemHostUnregister(held[i].host); munmap(held[i].host, held[i].n); return r; }
    case 6: case 7: return cu.MemFreeAsync(held[i].key, NULL);
    default: return cu.MemRelease(held[i].key);
    }
}

static void info(void)
{
    size_t f = 0, t = 0, dt = 0;
    unsigned f1 = 0, t1 = 0, dt1 = 0;
    int r = cu.MemGetInfo_v2(&f, &t);
    int r1 = cu.MemGetInfo ? cu.MemGetInfo(&f1, &t1) : -1;
    int rd = cu.DeviceTotalMem_v2(&dt, 0);
    int rd1 = cu.DeviceTotalMem ? cu.DeviceTotalMem(&dt1, 0) : -1;
    void *dev = NULL;
    u64 m[3] = {0, 0, 0};
    struct { unsigned version; u64 total, reserved, free, used; } m2 = {(unsigned)(sizeof m2 | (2u << 24)), 0, 0, 0, 0};
    cu.NvmlInit();
    cu.NvmlHandle(0, &dev);
    int rn = cu.NvmlMem(dev, m);
    int rn2 = cu.NvmlMem2(dev, &m2);
    printf("info rc=%d free=%zu total=%zu rc1=%d free1=%u total1=%u rcd=%d dtotal=%zu rcd1=%d dtotal1=%u "
           "nvml=%d nfree=%llu ntotal=%llu nused=%llu nvml2=%d n2free=%llu n2total=%llu n2used=%llu version=%u\n",
           r, f, t, r1, f1, t1, rd, dt, rd1, dt1, rn, m[1], m[0], m[2], rn2, m2.free, m2.total, m2.used, m2.version);
}

struct thr { int kind; u64 n; int iters; int fill; u64 got; int errors; };
static pthread_barrier_t barrier;

static void *worker(void *arg)
{
    struct thr *t = arg;
    pthread_barrier_wait(&barrier);
    if (t->fill) {
        int slot, u;
        while (do_alloc(t->kind, t->n, &slot, &u) == 0)
            t->got += t->n;
        return NULL;
    }
    for (int i = 0; i < t->iters; i++) {
        u64 d = 0;
        int r = t->kind == 8 ? cu.MemCreate(&d, t->n, NULL, 0) : cu.MemAlloc(&d, t->n);
        if (r) { t->errors++; continue; }
        r = t->kind == 8 ? cu.MemRelease(d) : cu.MemFree(d);
        if (r) t->errors++;
    }
    return NULL;
}

static void run_threads(int n, int kind, u64 size, int iters, int fill)
{
    pthread_t th[64];
    struct thr t[64];
    pthread_barrier_init(&barrier, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        t[i] = (struct thr){kind, size, iters, fill, 0, 0};
        pthread_create(&th[i], NULL, worker, &t[i]);
    }
    u64 got = 0;
    int errors = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        got += t[i].got;
        errors += t[i].errors;
    }
    printf("threads bytes=%llu errors=%d\n", got, errors);
}

static void where(const char *name)
{
    void *p = NULL;
    if (!strcmp(name, "cuMemAlloc")) p = (void *)cu.MemAlloc;
    else if (!strcmp(name, "cuMemCreate")) p = (void *)cu.MemCreate;
    else if (!strcmp(name, "cuMemGetInfo")) p = (void *)cu.MemGetInfo_v2;
    else if (!strcmp(name, "cuMemAllocAsync")) p = (void *)cu.MemAllocAsync;
    else if (!strcmp(name, "nvmlDeviceGetMemoryInfo")) p = (void *)cu.NvmlMem;
    Dl_info di;
    if (p && dladdr(p, &di) && di.dli_fname)
        printf("where %s lib=%s sym=%s\n", name, strrchr(di.dli_fname, '/') ? strrchr(di.dli_fname, '/') + 1 : di.dli_fname,
               di.dli_sname ? di.dli_sname : "?");
    else
        printf("where %s lib=? sym=?\n", name);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return 2;
    const char *route = argv[1];
#ifdef LINK
    if (strcmp(route, "link")) { fprintf(stderr, "this build only does route link\n"); return 2; }
    bind_link();
#else
    bind_runtime(route);
#endif
    for (int i = 2; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "init")) {
            void *ctx = NULL;
            int r = cu.Init(0);
            cu.PrimaryCtxRetain(&ctx, 0);
            cu.CtxSetCurrent(ctx);
            printf("init rc=%d\n", r);
        } else if (!strcmp(s, "alloc")) {
            int kind = kind_of(argv[++i]);
            u64 n = parse_size(argv[++i]);
            int slot, untouched;
            int r = do_alloc(kind, n, &slot, &untouched);
            printf("alloc %s rc=%d id=%d untouched=%d\n", kinds[kind], r, slot, r ? untouched : 0);
        } else if (!strcmp(s, "free")) {
            int id = atoi(argv[++i]);
            printf("free rc=%d\n", do_free(id));
        } else if (!strcmp(s, "info")) {
            info();
        } else if (!strcmp(s, "hold")) {
            printf("holding\n");
            for (;;)
                pause();
        } else if (!strcmp(s, "waitfile")) {
            const char *path = argv[++i];
            while (access(path, F_OK) != 0)
                usleep(1000);
        } else if (!strcmp(s, "fill")) {
            int kind = kind_of(argv[++i]);
            u64 n = parse_size(argv[++i]);
            int slot, u, count = 0, r;
            while ((r = do_alloc(kind, n, &slot, &u)) == 0)
                count++;
            printf("fill count=%d bytes=%llu rc=%d\n", count, (u64)count * n, r);
        } else if (!strcmp(s, "threads") || !strcmp(s, "threadfill")) {
            int fill = !strcmp(s, "threadfill");
            int n = atoi(argv[++i]);
            int kind = kind_of(argv[++i]);
            u64 size = parse_size(argv[++i]);
            int iters = fill ? 0 : atoi(argv[++i]);
            run_threads(n, kind, size, iters, fill);
        } else if (!strcmp(s, "forkalloc")) {
            int kind = kind_of(argv[++i]);
            u64 n = parse_size(argv[++i]);
            pid_t pid = fork();
            if (pid == 0) {
                int slot, u;
                int r = do_alloc(kind, n, &slot, &u);
                int r2 = do_alloc(kind, n, &slot, &u);
                printf("child pid=%d rc=%d rc2=%d\n", getpid(), r, r2);
                _exit(0); /* exits holding: the parent must get the share back */
            }
            int st;
            waitpid(pid, &st, 0);
            printf("forked status=%d\n", st);
        } else if (!strcmp(s, "trim")) {
            void *pool = NULL;
            cu.DeviceGetMemPool(&pool, 0);
            printf("trim rc=%d\n", cu.MemPoolTrimTo(pool, 0));
        } else if (!strcmp(s, "where")) {
            where(argv[++i]);
        } else if (!strcmp(s, "gpacheck")) {
            const char *sym = argv[++i];
            int ver = atoi(argv[++i]);
            u64 flags = strtoull(argv[++i], NULL, 0);
            void *p = NULL;
            int status = -1;
            int r = cu.GetProcAddress_v2(sym, &p, ver, flags, &status);
            Dl_info di;
            const char *lib = "?", *name = "?";
            if (p && dladdr(p, &di)) {
                lib = di.dli_fname && strrchr(di.dli_fname, '/') ? strrchr(di.dli_fname, '/') + 1 : "?";
                name = di.dli_sname ? di.dli_sname : "?";
            }
            printf("gpacheck %s ver=%d flags=%llu rc=%d status=%d lib=%s sym=%s\n", sym, ver, flags, r, status,
                   p ? lib : "NULL", p ? name : "NULL");
        } else if (!strcmp(s, "setavail")) {
            /* Play the kernel: rewrite the meminfo file with a new MemAvailable. */
            const char *path = argv[++i];
            u64 avail = parse_size(argv[++i]);
            FILE *f = fopen(path, "w");
            fprintf(f, "MemTotal: %llu kB\nMemFree: %llu kB\nMemAvailable: %llu kB\nHugePages_Total: 0\n"
                       "HugePages_Free: 0\nHugepagesize: 2048 kB\n", (128ull << 30) >> 10, avail >> 11, avail >> 10);
            fclose(f);
            usleep(30000); /* past the shim's 10 ms meminfo cache */
            printf("setavail ok\n");
        } else if (!strcmp(s, "freebogus")) {
            printf("freebogus rc=%d\n", cu.MemFree(0x1234000ull));
        } else if (!strcmp(s, "live")) {
            void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
            u64 (*live)(void) = h ? (u64 (*)(void))dlsym(h, "fakecu_live_bytes") : NULL;
            u64 (*calls)(const char *) = h ? (u64 (*)(const char *))dlsym(h, "fakecu_calls") : NULL;
            printf("live bytes=%llu trims=%llu\n", live ? live() : 0ull, calls ? calls("trim") : 0ull);
        } else if (!strcmp(s, "exit")) {
            return atoi(argv[++i]);
        } else {
            fprintf(stderr, "unknown step %s\n", s);
            return 2;
        }
    }
    return 0;
}
