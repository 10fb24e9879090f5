/* Read-only file maps that survive their file being cut: a SIGBUS inside a guarded map
 * (a page past the file's new end) gets a page of zeros mapped in its place and marks the
 * map as faulted; the decoder checks the mark and refuses what it read.  Faults outside
 * every guarded map go to the handler that was there before.  Not on Windows (no SIGBUS):
 * there every call is a no-op. */
#ifndef NNC_MAPGUARD_H
#define NNC_MAPGUARD_H

#include <stdint.h>
#include <string.h>

#define NNC_GUARD_SLOTS 1024

#if defined(_WIN32)
static int nnc_guard_add(const void *start, size_t length) { (void)start; (void)length; return -1; }
static void nnc_guard_remove(int slot) { (void)slot; }
static int nnc_guard_faulted(int slot) { (void)slot; return 0; }
static int nnc_guard_supported(void) { return 0; }
#else
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile uintptr_t nnc_guard_start[NNC_GUARD_SLOTS];
static volatile uintptr_t nnc_guard_end[NNC_GUARD_SLOTS];
static volatile sig_atomic_t nnc_guard_fault[NNC_GUARD_SLOTS];
static struct sigaction nnc_guard_previous;
static uintptr_t nnc_guard_page = 4096;

static void nnc_guard_pass_on(int sig, siginfo_t *info, void *context) {
    if (nnc_guard_previous.sa_flags & SA_SIGINFO) {
        if (nnc_guard_previous.sa_sigaction) { nnc_guard_previous.sa_sigaction(sig, info, context); return; }
    } else if (nnc_guard_previous.sa_handler != SIG_DFL && nnc_guard_previous.sa_handler != SIG_IGN) {
        nnc_guard_previous.sa_handler(sig);
        return;
    } else if (nnc_guard_previous.sa_handler == SIG_IGN && info->si_code <= 0) {
        return; /* an ignored signal sent by kill() stays ignored */
    }
    /* the default action: a fault runs again and ends the process as before; a signal sent (kill, raise) does not
     * repeat, so it is raised again now */
    signal(sig, SIG_DFL);
    if (info->si_code <= 0) raise(sig);
}

static void nnc_guard_on_sigbus(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    if (info->si_code > 0) { /* a fault of this process's own access, not a signal someone sent */
        uintptr_t address = (uintptr_t)info->si_addr;
        int slot;
        for (slot = 0; slot < NNC_GUARD_SLOTS; slot++) {
            uintptr_t end = __atomic_load_n(&nnc_guard_end[slot], __ATOMIC_ACQUIRE);
            if (nnc_guard_start[slot] <= address && address < end) {
                uintptr_t page = address & ~(nnc_guard_page - 1);
                void *zeros = mmap((void *)page, nnc_guard_page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                if (zeros == MAP_FAILED) break;
                nnc_guard_fault[slot] = 1;
                errno = saved_errno;
                return; /* the access runs again and reads zeros */
            }
        }
    }
    nnc_guard_pass_on(sig, info, context);
    errno = saved_errno;
}

/* Install the handler once per process, chaining to the one in force then (a handler installed later, such as
 * Python's faulthandler, chains to this one in turn; installing again would make each the other's previous). */
static int nnc_guard_installed = 0;

static int nnc_guard_install(void) {
    struct sigaction current, ours;
    if (nnc_guard_installed) return 0;
    if (sigaction(SIGBUS, NULL, &current) != 0) return -1;
    memset(&ours, 0, sizeof(ours));
    ours.sa_sigaction = nnc_guard_on_sigbus;
    ours.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    nnc_guard_previous = current;
    nnc_guard_page = (uintptr_t)sysconf(_SC_PAGESIZE);
    if (sigaction(SIGBUS, &ours, NULL) != 0) return -1;
    nnc_guard_installed = 1;
    return 0;
}

/* Guard [start, start + length), memory of one read-only file map (a fault can only be at a page wholly past
 * the file's end, so the page mapped over it holds nothing else); the slot, or -1 if none is free. */
static int nnc_guard_add(const void *start, size_t length) {
    int slot;
    if (nnc_guard_install() != 0) return -1;
    for (slot = 0; slot < NNC_GUARD_SLOTS; slot++) {
        if (nnc_guard_end[slot] == 0) {
            uintptr_t begin = (uintptr_t)start;
            uintptr_t end = begin + length;
            nnc_guard_fault[slot] = 0;
            nnc_guard_start[slot] = begin;
            __atomic_store_n(&nnc_guard_end[slot], end, __ATOMIC_RELEASE); /* the range is whole once end is seen */
            return slot;
        }
    }
    return -1;
}

static void nnc_guard_remove(int slot) {
    if (slot < 0 || slot >= NNC_GUARD_SLOTS) return;
    __atomic_store_n(&nnc_guard_end[slot], 0, __ATOMIC_RELEASE);
    nnc_guard_start[slot] = 0;
}

static int nnc_guard_faulted(int slot) {
    return (slot >= 0 && slot < NNC_GUARD_SLOTS) ? (int)nnc_guard_fault[slot] : 0;
}

static int nnc_guard_supported(void) { return 1; }
#endif
#endif
