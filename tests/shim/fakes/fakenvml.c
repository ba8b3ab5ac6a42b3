/* A fake libnvidia-ml.so.1 that answers like GB10: one device whose PCI location matches the fake
 * libcuda, and memory info NOT_SUPPORTED. FAKE_NVML_MEMORY=1 makes memory info succeed like a
 * discrete card instead (total FAKE_CUDA_TOTAL, free FAKE_NVML_FREE). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API __attribute__((visibility("default")))
typedef unsigned long long u64;

static int the_device;

static u64 env_u64(const char *name, u64 dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : dflt;
}

API int nvmlInit_v2(void) { return 0; }
API int nvmlInit(void) { return 0; }
API int nvmlShutdown(void) { return 0; }
API int nvmlDeviceGetCount_v2(unsigned *n) { *n = 1; return 0; }
API int nvmlDeviceGetHandleByIndex(unsigned i, void **d) { if (i) return 2; *d = &the_device; return 0; }
API int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **d) { return nvmlDeviceGetHandleByIndex(i, d); }
API int nvmlDeviceGetMigMode(void *d, unsigned *a, unsigned *b) { (void)d; (void)a; (void)b; return 3; }
API int nvmlDeviceGetName(void *d, char *name, unsigned len) { (void)d; snprintf(name, len, "NVIDIA GB10"); return 0; }
API int nvmlDeviceGetCudaComputeCapability(void *d, int *maj, int *min) { (void)d; *maj = 12; *min = 1; return 0; }
API int nvmlDeviceGetCurrentClocksThrottleReasons(void *d, u64 *r) { (void)d; *r = 0; return 0; }
API int nvmlDeviceGetTotalEccErrors(void *d, int a, int b, u64 *c) { (void)d; (void)a; (void)b; (void)c; return 3; }
API int nvmlDeviceGetComputeRunningProcesses_v3(void *d, unsigned *n, void *infos) { (void)d; (void)infos; *n = 0; return 0; }
API int nvmlSystemGetDriverVersion(char *v, unsigned len) { snprintf(v, len, "580.95.05"); return 0; }
API const char *nvmlErrorString(int r) { return r == 3 ? "Not Supported" : "fake NVML error"; }

/* nvmlPciInfo_t, v3 layout: MAX compares domain/bus/device with CUDA's attributes 50/33/34. */
struct pci_info {
    char bus_id_legacy[16];
    unsigned domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
};
API int nvmlDeviceGetPciInfo_v3(void *d, struct pci_info *p)
{
    (void)d;
    memset(p, 0, sizeof *p);
    p->domain = 0xF;
    p->bus = 1;
    p->device = 0;
    p->pci_device_id = 0x2E1210DE;
    snprintf(p->bus_id_legacy, sizeof p->bus_id_legacy, "000F:01:00.0");
    snprintf(p->bus_id, sizeof p->bus_id, "0000000F:01:00.0");
    return 0;
}

struct mem { u64 total, free, used; };
struct mem2 { unsigned version; u64 total, reserved, free, used; };

API int nvmlDeviceGetMemoryInfo(void *d, struct mem *m)
{
    (void)d;
    if (!m) return 2;
    if (!env_u64("FAKE_NVML_MEMORY", 0)) return 3; /* NOT_SUPPORTED, as on GB10 */
    m->total = env_u64("FAKE_CUDA_TOTAL", 128ull << 30);
    m->free = env_u64("FAKE_NVML_FREE", m->total / 2);
    m->used = m->total - m->free;
    return 0;
}

API int nvmlDeviceGetMemoryInfo_v2(void *d, struct mem2 *m)
{
    (void)d;
    if (!m) return 2;
    if (!env_u64("FAKE_NVML_MEMORY", 0)) return 3;
    m->total = env_u64("FAKE_CUDA_TOTAL", 128ull << 30);
    m->free = env_u64("FAKE_NVML_FREE", m->total / 2);
    m->reserved = 0;
    m->used = m->total - m->free;
    return 0;
}
