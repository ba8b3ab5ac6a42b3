/* Configuration from the environment, the size syntax, /proc/meminfo and the free-memory formula.
 * Parsing and configuration run at load, at query time or from Python. Two helpers are reached from
 * allocations: bm_now_coarse_ns (CLOCK_MONOTONIC_COARSE, a vDSO read, no syscall) on the fast path
 * when a floor is active, and bm_meminfo_parse_fd on the slow path only (a reservation the fast
 * path could not decide re-reads meminfo before it refuses). */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memcap.h"

struct bm_config bm_cfg;

static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* write(2), not stdio: we may run inside a constructor before the program set stdio up. */
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

BM_EXPORT int baldr_memcap_parse_size(const char *text, int allow_percent, unsigned long long *bytes,
                                      unsigned int *centipercent, char *err, size_t errlen)
{
    static const char want[] = "use bytes, a K/M/G/T suffix or a percentage such as 90%";
    static const char want_np[] = "use bytes or a K/M/G/T suffix";
    const char *hint = allow_percent ? want : want_np;
    if (!text || !*text) {
        set_err(err, errlen, "empty size (%s)", hint);
        return -1;
    }
    const char *s = text;
    unsigned __int128 whole = 0, frac = 0, scale = 1;
    int digits = 0, fdigits = 0;
    while (isdigit((unsigned char)*s)) {
        whole = whole * 10 + (unsigned)(*s++ - '0');
        if (whole > ((unsigned __int128)1 << 80)) {
            set_err(err, errlen, "\"%s\" is too large", text);
            return -1;
        }
        digits++;
    }
    if (*s == '.') {
        s++;
        while (isdigit((unsigned char)*s)) {
            if (fdigits < 12) { /* more precision than a byte needs; the rest is ignored */
                frac = frac * 10 + (unsigned)(*s - '0');
                scale *= 10;
            }
            s++;
            fdigits++;
        }
        if (!fdigits) {
            set_err(err, errlen, "\"%s\" is not a size (%s)", text, hint);
            return -1;
        }
    }
    if (!digits) {
        set_err(err, errlen, "\"%s\" is not a size (%s)", text, hint);
        return -1;
    }
    if (*s == '%') {
        if (!allow_percent) {
            set_err(err, errlen, "\"%s\": a percentage is not accepted here (%s)", text, hint);
            return -1;
        }
        if (s[1] != '\0' || fdigits > 2) {
            set_err(err, errlen, "\"%s\" is not a percentage (whole numbers or 2 decimals, e.g. 90%% or 87.5%%)", text);
            return -1;
        }
        unsigned __int128 cp = whole * 100 + (fdigits == 1 ? frac * 10 : frac);
        if (cp == 0 || cp > 10000) {
            set_err(err, errlen, "\"%s\": a percentage must be above 0%% and at most 100%%", text);
            return -1;
        }
        *bytes = 0;
        *centipercent = (unsigned int)cp;
        return 0;
    }
    int shift = 0;
    switch (toupper((unsigned char)*s)) {
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    case 'T': shift = 40; break;
    case 'B': break;
    case '\0': break;
    default:
        set_err(err, errlen, "\"%s\": unknown suffix \"%s\" (%s)", text, s, hint);
        return -1;
    }
    if (*s) {
        /* Accept K, KB, KiB (all binary) and a bare B. */
        const char *rest = s + 1;
        if (shift && (*rest == 'i' || *rest == 'I'))
            rest++;
        if (shift && (*rest == 'b' || *rest == 'B'))
            rest++;
        if (*rest) {
            set_err(err, errlen, "\"%s\": unknown suffix \"%s\" (%s)", text, s, hint);
            return -1;
        }
    }
    if (!shift && fdigits) {
        set_err(err, errlen, "\"%s\": a byte count must be a whole number", text);
        return -1;
    }
    unsigned __int128 v = (whole << shift) + ((frac << shift) / scale);
    if (v > (unsigned __int128)UINT64_MAX - 1) {
        set_err(err, errlen, "\"%s\" is too large", text);
        return -1;
    }
    *bytes = (unsigned long long)v;
    *centipercent = 0;
    return 0;
}

BM_EXPORT unsigned long long baldr_memcap_resolve(unsigned long long bytes, unsigned int centipercent,
                                                  unsigned long long total)
{
    if (!centipercent)
        return bytes;
    return (unsigned long long)((unsigned __int128)total * centipercent / 10000);
}

BM_EXPORT int baldr_memcap_check_budget(const char *name, char *err, size_t errlen)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64) {
        set_err(err, errlen, "budget name must be 1 to 64 characters");
        return -1;
    }
    if (name[0] == '.') {
        set_err(err, errlen, "budget name \"%s\" must not start with a dot", name);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!isalnum(c) && c != '.' && c != '_' && c != '-') {
            set_err(err, errlen, "budget name \"%s\": only letters, digits, '.', '_' and '-' are allowed", name);
            return -1;
        }
    }
    return 0;
}

BM_EXPORT unsigned long long baldr_memcap_free_figure(unsigned long long cap, unsigned long long committed,
                                                      unsigned long long available, unsigned long long floor,
                                                      unsigned long long total)
{
    unsigned long long room = committed >= cap ? 0 : cap - committed;
    unsigned long long avail = available > floor ? available - floor : 0;
    unsigned long long f = room < avail ? room : avail;
    return f < total ? f : total;
}

/* ---- /proc/meminfo ---------------------------------------------------------------------------- */

static unsigned long long field(const char *buf, const char *name, int *found)
{
    size_t len = strlen(name);
    for (const char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, len) == 0 && p[len] == ':') {
            const char *q = p + len + 1;
            while (*q == ' ')
                q++;
            unsigned long long v = 0;
            while (isdigit((unsigned char)*q))
                v = v * 10 + (unsigned)(*q++ - '0');
            while (*q == ' ')
                q++;
            if (q[0] == 'k' && q[1] == 'B')
                v *= 1024;
            *found = 1;
            return v;
        }
    }
    *found = 0;
    return 0;
}

int bm_meminfo_parse_fd(int fd, struct baldr_memcap_meminfo *out)
{
    char buf[8192];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return n < 0 ? -errno : -EINVAL;
    buf[n] = '\0';
    int has_total, has_free, has_avail, f;
    memset(out, 0, sizeof *out);
    out->mem_total = field(buf, "MemTotal", &has_total);
    out->mem_free = field(buf, "MemFree", &has_free);
    out->mem_available = field(buf, "MemAvailable", &has_avail);
    out->hugepages_total = field(buf, "HugePages_Total", &f);
    out->hugepages_free = field(buf, "HugePages_Free", &f);
    out->hugepage_size = field(buf, "Hugepagesize", &f);
    if (!has_total || !(has_free || has_avail))
        return -EINVAL;
    if (!has_avail) /* kernels before 3.14 */
        out->mem_available = out->mem_free;
    /* With hugetlb configured, device memory comes out of the hugepage pool (NVIDIA's own sample). */
    if (out->hugepages_total)
        out->available_eff = out->hugepages_free * out->hugepage_size;
    else
        out->available_eff = out->mem_available;
    return 0;
}

BM_EXPORT int baldr_memcap_meminfo_read(const char *path, struct baldr_memcap_meminfo *out)
{
    int fd = open(path && *path ? path : "/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = bm_meminfo_parse_fd(fd, out);
    close(fd);
    return r;
}

int bm_meminfo_open(void)
{
    return open(bm_cfg.meminfo_path, O_RDONLY | O_CLOEXEC);
}

uint64_t bm_now_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* vDSO: no system call */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- environment ------------------------------------------------------------------------------ */

static const char *policy_text(void)
{
    return bm_cfg.on_error_closed ? "BALDR_MEMCAP_ON_ERROR=closed: capped allocations will be refused"
                                  : "ignored";
}

static void bad(int quiet, const char *var, const char *why, const char *consequence)
{
    bm_cfg.bad_value = 1;
    if (!quiet)
        say("baldr-memcap: %s: %s; %s", var, why, consequence);
}

static void load_size(int quiet, const char *var, int *has, unsigned long long *bytes, unsigned int *cp,
                      int zero_ok)
{
    const char *v = getenv(var);
    char err[200];
    if (!v || !*v) /* empty counts as unset, as shells make it easy to export an empty value */
        return;
    if (baldr_memcap_parse_size(v, 1, bytes, cp, err, sizeof err) != 0) {
        *bytes = 0;
        *cp = 0;
        bad(quiet, var, err, bm_cfg.on_error_closed ? policy_text() : "ignored (as if unset)");
        return;
    }
    if (!zero_ok && *bytes == 0 && *cp == 0) {
        bad(quiet, var, "\"0\" would refuse every allocation (unset it for no cap)",
            bm_cfg.on_error_closed ? policy_text() : "ignored (as if unset)");
        return;
    }
    if (has)
        *has = 1;
}

void bm_config_load(int quiet)
{
    memset(&bm_cfg, 0, sizeof bm_cfg);
    bm_cfg.unified = BM_UNIFIED_AUTO;
    strcpy(bm_cfg.budget, "default");
    bm_cfg.budget_ok = 1;
    strcpy(bm_cfg.meminfo_path, "/proc/meminfo");

    /* First, as it decides what happens to every other malformed value. */
    const char *v = getenv("BALDR_MEMCAP_ON_ERROR");
    if (v && *v) {
        if (!strcmp(v, "closed"))
            bm_cfg.on_error_closed = 1;
        else if (strcmp(v, "open") != 0) {
            bm_cfg.on_error_closed = 1; /* a typo must not weaken the guarantee */
            bad(quiet, "BALDR_MEMCAP_ON_ERROR", "expected open or closed", "using closed");
        }
    }
    load_size(quiet, "BALDR_MEMCAP_LIMIT", &bm_cfg.has_limit, &bm_cfg.limit_bytes, &bm_cfg.limit_centipct, 0);
    load_size(quiet, "BALDR_MEMCAP_FLOOR", NULL, &bm_cfg.floor_bytes, &bm_cfg.floor_centipct, 1);

    v = getenv("BALDR_MEMCAP_BUDGET");
    if (v && *v) {
        char err[200];
        if (baldr_memcap_check_budget(v, err, sizeof err) == 0)
            snprintf(bm_cfg.budget, sizeof bm_cfg.budget, "%s", v);
        else {
            bm_cfg.budget_ok = 0;
            bad(quiet, "BALDR_MEMCAP_BUDGET", err,
                bm_cfg.on_error_closed ? policy_text() : "using a ledger private to this process");
        }
    }
    v = getenv("BALDR_MEMCAP_UNIFIED");
    if (v && *v) {
        if (!strcmp(v, "on"))
            bm_cfg.unified = BM_UNIFIED_ON;
        else if (!strcmp(v, "off"))
            bm_cfg.unified = BM_UNIFIED_OFF;
        else if (strcmp(v, "auto") != 0) {
            /* Not a safety setting: fall back to detection rather than refusing. */
            if (!quiet)
                say("baldr-memcap: BALDR_MEMCAP_UNIFIED: \"%s\": expected auto, on or off; using auto", v);
        }
    }
    v = getenv("BALDR_MEMCAP_MEMINFO");
    if (v && *v) {
        if (strlen(v) >= sizeof bm_cfg.meminfo_path)
            bad(quiet, "BALDR_MEMCAP_MEMINFO", "path too long", "using /proc/meminfo");
        else
            snprintf(bm_cfg.meminfo_path, sizeof bm_cfg.meminfo_path, "%s", v);
    }
}

void bm_say(const char *msg)
{
    say("baldr-memcap: %s", msg);
}
