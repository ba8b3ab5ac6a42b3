/* The ledger: one small file in /dev/shm per user and budget, mapped by every process of a tree.
 *
 * - `committed` is the only word allocations contend on: a process reserves with a CAS that keeps
 *   committed <= cap, then calls the driver, and gives the bytes back if the driver fails. Two racing
 *   processes can therefore never both pass the check.
 * - Each process also counts its own bytes in a slot keyed by pid and start time, so that when it
 *   dies (SIGKILL included) any other process can return its share. Reclaiming happens on the
 *   failure path, at query time and when joining, never on the allocation path.
 * - No lock lives in the mapping: setup is serialised with flock(), which the kernel drops when its
 *   holder dies; slots are claimed and reclaimed with CAS on the pid word. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <signal.h>
#include <unistd.h>

#include "memcap.h"

#define BM_MAGIC 0x316170636d656d62ULL /* "bmemcap1" */

BM_EXPORT int baldr_memcap_ledger_path(const char *budget, char *out, size_t outlen)
{
    /* The layout version is in the name, so shims with different layouts never share a file. */
    int n = snprintf(out, outlen, "/dev/shm/baldr-memcap.%d.%u.%s", BALDR_MEMCAP_LAYOUT,
                     (unsigned)geteuid(), budget);
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

/* Field 22 of /proc/PID/stat (start time, clock ticks since boot) and the state letter. */
static int read_stat(int pid, uint64_t *start, char *state)
{
    char path[64], buf[1024];
    if (pid > 0)
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
    else
        snprintf(path, sizeof path, "/proc/self/stat");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may itself contain spaces and ')' */
    if (!p || p[1] != ' ')
        return -EIO;
    *state = p[2];
    int fieldno = 3;
    for (p += 2; *p && fieldno < 22; p++)
        if (*p == ' ')
            fieldno++;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    *start = v;
    return 0;
}

uint64_t bm_self_start_time(void)
{
    uint64_t st = 0;
    char state;
    if (read_stat(0, &st, &state) != 0)
        return 0;
    return st;
}

/* Is the process that owns a slot still there? A zombie counts as dead: the driver has already
 * released its memory by then. A different start time means the pid was reused. */
static int proc_alive(int pid, uint64_t start)
{
    uint64_t st;
    char state;
    int r = read_stat(pid, &st, &state);
    if (r == -ENOENT || r == -ESRCH)
        return 0;
    if (r != 0) /* /proc unreadable (hidepid): fall back to a signal probe */
        return !(kill(pid, 0) != 0 && errno == ESRCH);
    if (state == 'Z' || state == 'X')
        return 0;
    return !(start && st != start);
}

static void sub_sat(_Atomic uint64_t *v, uint64_t n)
{
    uint64_t cur = atomic_load_explicit(v, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(v, &cur, cur > n ? cur - n : 0, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

static uint64_t reclaim_slot(struct bm_ledger *L, struct bm_slot *s)
{
    uint64_t u = atomic_exchange_explicit(&s->used, 0, memory_order_acq_rel);
    if (u)
        sub_sat(&L->committed, u);
    atomic_store_explicit(&s->start, 0, memory_order_relaxed);
    atomic_store_explicit(&s->pid, 0, memory_order_release);
    return u;
}

uint64_t bm_ledger_reclaim(struct bm_ledger *L)
{
    int32_t me = (int32_t)getpid();
    uint64_t total = 0;
    for (unsigned i = 0; i < BALDR_MEMCAP_SLOTS; i++) {
        struct bm_slot *s = &L->slots[i];
        int32_t p = atomic_load_explicit(&s->pid, memory_order_acquire);
        if (p == 0 || p == me || p == -me)
            continue;
        if (p < 0) {
            /* Someone was reclaiming this slot; take over only if it died doing so. */
            if (proc_alive(-p, 0))
                continue;
        } else if (proc_alive(p, atomic_load_explicit(&s->start, memory_order_acquire))) {
            continue;
        }
        if (atomic_compare_exchange_strong_explicit(&s->pid, &p, -me, memory_order_acq_rel, memory_order_relaxed))
            total += reclaim_slot(L, s);
    }
    return total;
}

static struct bm_slot *claim_slot(struct bm_ledger *L)
{
    int32_t me = (int32_t)getpid();
    uint64_t start = bm_self_start_time();
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < BALDR_MEMCAP_SLOTS; i++) {
            struct bm_slot *s = &L->slots[i];
            int32_t p = atomic_load_explicit(&s->pid, memory_order_acquire);
            /* Our own pid already here: left by this process before an exec, whose CUDA memory
             * went with the old image. Claiming happens once per image, so it cannot be live. */
            if (p == me && atomic_load_explicit(&s->start, memory_order_relaxed) == start &&
                atomic_compare_exchange_strong(&s->pid, &p, -me))
                reclaim_slot(L, s);
        }
        for (unsigned i = 0; i < BALDR_MEMCAP_SLOTS; i++) {
            struct bm_slot *s = &L->slots[i];
            int32_t zero = 0;
            if (atomic_compare_exchange_strong_explicit(&s->pid, &zero, me, memory_order_acq_rel,
                                                        memory_order_relaxed)) {
                atomic_store_explicit(&s->start, start, memory_order_release);
                return s;
            }
        }
        bm_ledger_reclaim(L);
    }
    return NULL;
}

static void init_header(struct bm_ledger *L, uint64_t cap)
{
    L->layout = BALDR_MEMCAP_LAYOUT;
    L->nslots = BALDR_MEMCAP_SLOTS;
    atomic_store(&L->cap, cap);
    atomic_store(&L->committed, 0);
    __atomic_store_n(&L->magic, BM_MAGIC, __ATOMIC_RELEASE);
}

struct bm_ledger *bm_ledger_attach(const char *budget, uint64_t cap, struct bm_slot **slot, const char **why)
{
    char path[256];
    if (baldr_memcap_ledger_path(budget, path, sizeof path) != 0) {
        *why = "ledger path too long";
        return NULL;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        *why = "cannot open the ledger in /dev/shm";
        return NULL;
    }
    struct stat st;
    /* Someone else's file under our name could feed us a wrong ledger: refuse it. */
    if (fstat(fd, &st) != 0 || st.st_uid != geteuid() || (st.st_mode & 077) || !S_ISREG(st.st_mode)) {
        close(fd);
        *why = "the ledger file is not a private (0600) file of this user";
        return NULL;
    }
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            close(fd);
            *why = "cannot lock the ledger";
            return NULL;
        }
    }
    struct bm_ledger *L = MAP_FAILED;
    if ((st.st_size >= (off_t)sizeof *L || ftruncate(fd, sizeof *L) == 0))
        L = mmap(NULL, sizeof *L, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (L != MAP_FAILED && __atomic_load_n(&L->magic, __ATOMIC_ACQUIRE) != BM_MAGIC)
        init_header(L, cap); /* new, or its creator died before finishing: nobody used it yet */
    flock(fd, LOCK_UN);
    close(fd);
    if (L == MAP_FAILED) {
        *why = "cannot map the ledger";
        return NULL;
    }
    if (L->layout != BALDR_MEMCAP_LAYOUT || L->nslots != BALDR_MEMCAP_SLOTS) {
        munmap(L, sizeof *L);
        *why = "the ledger has an unknown layout";
        return NULL;
    }
    atomic_store(&L->cap, cap);
    *slot = claim_slot(L);
    if (!*slot) {
        munmap(L, sizeof *L);
        *why = "all ledger slots are held by live processes";
        return NULL;
    }
    return L;
}

struct bm_ledger *bm_ledger_private(struct bm_slot **slot)
{
    /* MAP_SHARED so that fork children still share it, as they would the real ledger. */
    struct bm_ledger *L = mmap(NULL, sizeof *L, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (L == MAP_FAILED)
        return NULL;
    init_header(L, BM_NO_CAP);
    *slot = claim_slot(L);
    return L;
}

BM_EXPORT int baldr_memcap_ledger_read(const char *budget, struct baldr_memcap_view *out)
{
    char path[256];
    memset(out, 0, sizeof *out);
    if (baldr_memcap_check_budget(budget, NULL, 0) != 0 || baldr_memcap_ledger_path(budget, path, sizeof path) != 0)
        return -EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(struct bm_ledger)) {
        close(fd);
        return -EINVAL;
    }
    const struct bm_ledger *L = mmap(NULL, sizeof *L, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (L == MAP_FAILED)
        return -errno;
    int r = 0;
    if (__atomic_load_n(&L->magic, __ATOMIC_ACQUIRE) != BM_MAGIC || L->layout != BALDR_MEMCAP_LAYOUT) {
        r = -EPROTO;
        goto out;
    }
    out->layout = L->layout;
    out->cap = atomic_load((_Atomic uint64_t *)&L->cap);
    out->committed = atomic_load((_Atomic uint64_t *)&L->committed);
    for (unsigned i = 0; i < BALDR_MEMCAP_SLOTS; i++) {
        const struct bm_slot *s = &L->slots[i];
        int32_t pid = atomic_load((_Atomic int32_t *)&s->pid);
        if (pid <= 0)
            continue;
        struct baldr_memcap_slot_view *v = &out->slots[out->nslots++];
        v->pid = pid;
        v->start_time = atomic_load((_Atomic uint64_t *)&s->start);
        v->used = atomic_load((_Atomic uint64_t *)&s->used);
        v->alive = proc_alive(pid, v->start_time);
        if (!v->alive)
            out->dead_used += v->used;
    }
out:
    munmap((void *)L, sizeof *L);
    return r;
}
