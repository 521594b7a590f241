// The C reference for `faultline bench`: the same demand-paging work with raw ioctls and
// nothing else, to run side by side with faultline on one machine (BENCHMARKS.md).
//
// Each vCPU writes every page of its own slice once; each page is missing at the start
// (except with -M prefill) and is filled from a source buffer:
//   uffd    the vCPU sleeps in the kernel; a handler thread per vCPU reads its
//           userfaultfd and fills (UFFDIO_COPY for anon, memcpy + UFFDIO_CONTINUE for shmem)
//   exit    UFFD_FEATURE_SIGBUS: KVM_RUN returns to the vCPU thread, which fills the page
//           itself (KVM_EXIT_MMIO at the RAM address on PVM, EFAULT with
//           KVM_EXIT_MEMORY_FAULT upstream) and completes the access
//   prefill the memory is present before the vCPUs start: the ceiling
// The guest is faultline's benchmark guest: 64-bit long mode from the first instruction,
// identity-mapped with 2 MiB pages, one `mov [rdi+k*4096], rdi` per page in blocks of 256
// (PVM emulates a guest's instructions, so the loop must cost about one a page); -g simple
// writes one page per pass of a four-instruction loop instead, as a plain guest would.
//
// Build: cc -O2 -pthread -o demand_paging bench/reference/demand_paging.c
// Usage: demand_paging [-M prefill|uffd|exit] [-b anon|shmem] [-v VCPUS] [-m MIB_PER_VCPU]
//                      [-r REPEAT] [-n (no pinning)] [-g unrolled|simple]
// (defaults: exit, shmem, 1 vCPU, 128 MiB, 5 trials, vCPU i and its handler on the i-th
// allowed CPU: faultline bench's defaults)
// Prints one line per trial and a median line: pages/s overall, from the first vCPU's
// start to the last vCPU's DONE.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// Newer than the headers of older distributions.
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif

#define PAGE 4096ul
#define BOOT_SIZE 0x200000ul
#define GDT_GPA 0x1000ul
#define PML4_GPA 0x2000ul
#define PDPT_GPA 0x3000ul
#define PD_GPA 0x4000ul
#define CODE_GPA 0x100000ul
#define STACKS_GPA 0x140000ul
#define BLOCK_PAGES 256ul
#define DONE_PORT 0x12
#define MAX_VCPUS 64

enum mode { PREFILL, UFFD, EXIT };

struct vcpu {
    int id;
    int fd;
    struct kvm_run *run;
    int uffd;
    uint64_t slice_gpa, slice_len;
    double start, end;
    uint64_t faults;
    pthread_t thread, handler;
};

static struct {
    enum mode mode;
    int shmem;
    int nvcpus;
    uint64_t mem_per_vcpu;
    int pin;
    uint64_t block_pages; // pages one pass of the guest's loop writes (-g)
    uint64_t mem_bytes;
    uint8_t *guest;  // the guest's view: registered with userfaultfd
    uint8_t *alias;  // shmem: the same pages, always mapped, for filling
    uint8_t *source; // what each page is filled from
    int stop_fd;     // eventfd: tells handler threads to end
    pthread_barrier_t go;
    int cpus[1024];
    int ncpus;
} g;

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "demand_paging: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin_to(int i) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(g.cpus[i % g.ncpus], &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set))
        die("pin a thread to CPU %d", g.cpus[i % g.ncpus]);
}

// Makes the page at `gpa` present with its source content. `wake`: a vCPU may sleep on it.
static void fill(int uffd, uint64_t gpa, int wake) {
    uint64_t off = gpa & ~(PAGE - 1);
    int r;
    if (g.shmem) {
        memcpy(g.alias + off, g.source + off, PAGE);
        struct uffdio_continue c = {
            .range = {.start = (uint64_t)g.guest + off, .len = PAGE},
            .mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE,
        };
        r = ioctl(uffd, UFFDIO_CONTINUE, &c);
    } else {
        struct uffdio_copy c = {
            .dst = (uint64_t)g.guest + off,
            .src = (uint64_t)g.source + off,
            .len = PAGE,
            .mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE,
        };
        r = ioctl(uffd, UFFDIO_COPY, &c);
    }
    if (r && errno == EEXIST) {
        // Filled meanwhile: only the wake-up is owed.
        if (wake) {
            struct uffdio_range range = {.start = (uint64_t)g.guest + off, .len = PAGE};
            if (ioctl(uffd, UFFDIO_WAKE, &range))
                die("UFFDIO_WAKE at %#lx: %s", off, strerror(errno));
        }
        return;
    }
    if (r)
        die("fill at %#lx: %s", off, strerror(errno));
}

static void *handler(void *arg) {
    struct vcpu *v = arg;
    struct uffd_msg msgs[64];
    if (g.pin)
        pin_to(v->id);
    for (;;) {
        struct pollfd p[2] = {{.fd = v->uffd, .events = POLLIN}, {.fd = g.stop_fd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        if (p[1].revents)
            return NULL;
        ssize_t n = read(v->uffd, msgs, sizeof msgs);
        if (n < 0) {
            if (errno == EAGAIN)
                continue;
            die("read userfaultfd: %s", strerror(errno));
        }
        for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
                die("unexpected userfaultfd event %d", msgs[i].event);
            fill(v->uffd, msgs[i].arg.pagefault.address - (uint64_t)g.guest, 1);
            v->faults++;
        }
    }
}

static void *vcpu_thread(void *arg) {
    struct vcpu *v = arg;
    if (g.pin)
        pin_to(v->id);
    pthread_barrier_wait(&g.go);
    v->start = now();
    for (;;) {
        int r = ioctl(v->fd, KVM_RUN, 0);
        struct kvm_run *run = v->run;
        if (r < 0 && errno == EFAULT && run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
            // Upstream's annotated fault: flags, gpa, size at the start of the union.
            uint64_t gpa;
            memcpy(&gpa, (uint8_t *)run->padding + 8, sizeof gpa);
            if (gpa < v->slice_gpa || gpa >= v->slice_gpa + v->slice_len)
                die("vCPU %d: memory fault at %#lx, outside its slice", v->id, gpa);
            fill(v->uffd, gpa, 0);
            v->faults++;
            continue;
        }
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("vCPU %d: KVM_RUN: %s", v->id, strerror(errno));
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == DONE_PORT) {
                v->end = now();
                return NULL;
            }
            die("vCPU %d: I/O at port %#x", v->id, run->io.port);
        case KVM_EXIT_MMIO: {
            // PVM with UFFD_FEATURE_SIGBUS: the missing page, as an access to complete.
            uint64_t gpa = run->mmio.phys_addr;
            if (gpa < v->slice_gpa || gpa + run->mmio.len > v->slice_gpa + v->slice_len)
                die("vCPU %d: access at %#llx, outside its slice", v->id, run->mmio.phys_addr);
            fill(v->uffd, gpa, 0);
            v->faults++;
            if (run->mmio.is_write)
                memcpy(g.guest + gpa, run->mmio.data, run->mmio.len);
            else
                memcpy(run->mmio.data, g.guest + gpa, run->mmio.len);
            break;
        }
        default:
            die("vCPU %d: unexpected exit %d", v->id, run->exit_reason);
        }
    }
}

static uint64_t gdt_entry(uint64_t flags, uint64_t base, uint64_t limit) {
    return ((base & 0xff000000ul) << 32) | ((flags & 0xf0fful) << 40) |
           ((limit & 0xf0000ul) << 32) | ((base & 0xfffffful) << 16) | (limit & 0xfffful);
}

static struct kvm_segment segment(uint64_t e, uint16_t selector) {
    return (struct kvm_segment){
        .base = 0,
        .limit = 0xffffffff,
        .selector = selector,
        .type = (e >> 40) & 0xf,
        .present = (e >> 47) & 1,
        .dpl = (e >> 45) & 3,
        .db = (e >> 54) & 1,
        .s = (e >> 44) & 1,
        .l = (e >> 53) & 1,
        .g = (e >> 55) & 1,
        .avl = (e >> 52) & 1,
    };
}

// The boot region: GDT, identity page tables (2 MiB pages), the code.
static void write_boot(void) {
    uint64_t gdt[4] = {0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff),
                       gdt_entry(0x808b, 0, 0xfffff)};
    memcpy(g.guest + GDT_GPA, gdt, sizeof gdt);
    uint64_t gib = (g.mem_bytes + (1ul << 30) - 1) >> 30;
    if (PD_GPA + gib * PAGE > CODE_GPA)
        die("too much memory for the boot region's page tables");
    uint64_t *pml4 = (uint64_t *)(g.guest + PML4_GPA);
    uint64_t *pdpt = (uint64_t *)(g.guest + PDPT_GPA);
    pml4[0] = PDPT_GPA | 3;
    for (uint64_t i = 0; i < gib; i++) {
        pdpt[i] = (PD_GPA + i * PAGE) | 3;
        uint64_t *pd = (uint64_t *)(g.guest + PD_GPA + i * PAGE);
        for (uint64_t j = 0; j < 512; j++)
            pd[j] = (i << 30) | (j << 21) | 0x83;
    }
    // top: cmp rdi, rsi; jae done; mov [rdi+k*4096], rdi (k < block); add rdi, block;
    // jmp top
    // done: out DONE, al; jmp done
    uint8_t *c = g.guest + CODE_GPA, *p = c;
    *p++ = 0x48, *p++ = 0x39, *p++ = 0xf7;
    uint8_t *jae = p;
    *p++ = 0x0f, *p++ = 0x83, p += 4;
    for (uint32_t k = 0; k < g.block_pages; k++) {
        uint32_t disp = k * PAGE;
        *p++ = 0x48, *p++ = 0x89, *p++ = 0xbf;
        memcpy(p, &disp, 4), p += 4;
    }
    uint32_t step = g.block_pages * PAGE;
    *p++ = 0x48, *p++ = 0x81, *p++ = 0xc7;
    memcpy(p, &step, 4), p += 4;
    int32_t back = (int32_t)(c - (p + 5));
    *p++ = 0xe9;
    memcpy(p, &back, 4), p += 4;
    int32_t to_done = (int32_t)(p - (jae + 6));
    memcpy(jae + 2, &to_done, 4);
    *p++ = 0xe6, *p++ = DONE_PORT;
    *p++ = 0xeb, *p++ = 0xfc;
}

static void setup_vcpu(int kvm, int vm, struct vcpu *v, struct kvm_cpuid2 *cpuid, int run_size) {
    v->fd = ioctl(vm, KVM_CREATE_VCPU, v->id);
    if (v->fd < 0)
        die("KVM_CREATE_VCPU: %s", strerror(errno));
    v->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->run == MAP_FAILED)
        die("mmap kvm_run: %s", strerror(errno));
    for (uint32_t i = 0; i < cpuid->nent; i++)
        if (cpuid->entries[i].function == 1)
            cpuid->entries[i].ebx = (cpuid->entries[i].ebx & 0xffffff) | ((uint32_t)v->id << 24);
    if (ioctl(v->fd, KVM_SET_CPUID2, cpuid))
        die("KVM_SET_CPUID2: %s", strerror(errno));
    struct kvm_sregs s;
    if (ioctl(v->fd, KVM_GET_SREGS, &s))
        die("KVM_GET_SREGS: %s", strerror(errno));
    uint64_t code = gdt_entry(0xa09b, 0, 0xfffff), data = gdt_entry(0xc093, 0, 0xfffff);
    s.gdt.base = GDT_GPA;
    s.gdt.limit = 4 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cs = segment(code, 0x08);
    s.ds = s.es = s.fs = s.gs = s.ss = segment(data, 0x10);
    s.tr = segment(gdt_entry(0x808b, 0, 0xfffff), 0x18);
    s.cr3 = PML4_GPA;
    s.cr4 |= (1 << 5) | (1 << 9) | (1 << 10);
    s.cr0 = 1 | 2 | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 18) | (1ul << 31);
    s.efer |= (1 << 8) | (1 << 10);
    if (ioctl(v->fd, KVM_SET_SREGS, &s))
        die("KVM_SET_SREGS: %s", strerror(errno));
    struct kvm_fpu fpu = {.fcw = 0x37f, .mxcsr = 0x1f80};
    if (ioctl(v->fd, KVM_SET_FPU, &fpu))
        die("KVM_SET_FPU: %s", strerror(errno));
    struct kvm_regs r = {
        .rip = CODE_GPA,
        .rsp = STACKS_GPA + (v->id + 1) * PAGE,
        .rdi = v->slice_gpa,
        .rsi = v->slice_gpa + v->slice_len,
        .rflags = 2,
    };
    if (ioctl(v->fd, KVM_SET_REGS, &r))
        die("KVM_SET_REGS: %s", strerror(errno));
    // Application processors would wait for a SIPI.
    struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
    if (ioctl(v->fd, KVM_SET_MP_STATE, &mp))
        die("KVM_SET_MP_STATE: %s", strerror(errno));
    (void)kvm;
}

static int open_uffd(uint64_t gpa, uint64_t len) {
    int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        die("userfaultfd: %s", strerror(errno));
    struct uffdio_api api = {.api = UFFD_API};
    if (g.mode == EXIT)
        api.features |= UFFD_FEATURE_SIGBUS;
    if (g.shmem)
        api.features |= UFFD_FEATURE_MINOR_SHMEM;
    if (ioctl(fd, UFFDIO_API, &api))
        die("UFFDIO_API (features %#llx): %s", api.features, strerror(errno));
    struct uffdio_register reg = {
        .range = {.start = (uint64_t)g.guest + gpa, .len = len},
        .mode = g.shmem ? UFFDIO_REGISTER_MODE_MINOR : UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg))
        die("UFFDIO_REGISTER: %s", strerror(errno));
    return fd;
}

static void *map(size_t len, int flags, int fd) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED)
        die("mmap %zu bytes: %s", len, strerror(errno));
    return p;
}

// One trial in a fresh VM; returns its pages/s.
static double trial(void) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm: %s", strerror(errno));
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM: %s", strerror(errno));
    int memfd = -1;
    if (g.shmem) {
        memfd = memfd_create("demand-paging", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, g.mem_bytes) || fallocate(memfd, 0, 0, g.mem_bytes))
            die("memfd of %lu bytes: %s", g.mem_bytes, strerror(errno));
        g.guest = map(g.mem_bytes, MAP_SHARED, memfd);
        g.alias = map(g.mem_bytes, MAP_SHARED | MAP_POPULATE, memfd);
    } else {
        g.guest = map(g.mem_bytes, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
    }
    write_boot();
    if (g.mode == PREFILL)
        memcpy(g.guest + BOOT_SIZE, g.source + BOOT_SIZE, g.mem_bytes - BOOT_SIZE);
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = 0,
        .memory_size = g.mem_bytes,
        .userspace_addr = (uint64_t)g.guest,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region))
        die("KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0))
        die("KVM_CREATE_IRQCHIP: %s", strerror(errno));
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + 256 * sizeof cpuid->entries[0]);
    cpuid->nent = 256;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid))
        die("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));

    struct vcpu vcpus[MAX_VCPUS] = {0};
    for (int i = 0; i < g.nvcpus; i++) {
        struct vcpu *v = &vcpus[i];
        v->id = i;
        v->slice_gpa = BOOT_SIZE + i * g.mem_per_vcpu;
        v->slice_len = g.mem_per_vcpu;
        v->uffd = g.mode == PREFILL ? -1 : open_uffd(v->slice_gpa, v->slice_len);
        setup_vcpu(kvm, vm, v, cpuid, run_size);
    }
    g.stop_fd = eventfd(0, EFD_CLOEXEC);
    pthread_barrier_init(&g.go, NULL, g.nvcpus);
    for (int i = 0; i < g.nvcpus; i++) {
        if (g.mode == UFFD && pthread_create(&vcpus[i].handler, NULL, handler, &vcpus[i]))
            die("start a handler thread");
        if (pthread_create(&vcpus[i].thread, NULL, vcpu_thread, &vcpus[i]))
            die("start a vCPU thread");
    }
    double first = 1e300, last = 0;
    uint64_t faults = 0;
    for (int i = 0; i < g.nvcpus; i++) {
        pthread_join(vcpus[i].thread, NULL);
        first = vcpus[i].start < first ? vcpus[i].start : first;
        last = vcpus[i].end > last ? vcpus[i].end : last;
    }
    uint64_t one = 1;
    if (write(g.stop_fd, &one, sizeof one) != sizeof one)
        die("stop the handler threads: %s", strerror(errno));
    for (int i = 0; i < g.nvcpus; i++) {
        if (g.mode == UFFD)
            pthread_join(vcpus[i].handler, NULL);
        faults += vcpus[i].faults;
    }
    uint64_t pages = g.nvcpus * (g.mem_per_vcpu / PAGE);
    // First, as reading a page that never faulted in would wait on a fill that never comes.
    if (g.mode != PREFILL && faults != pages)
        die("%lu faults for %lu pages", faults, pages);
    // Every page arrived with its content and the guest's write over it.
    for (uint64_t off = BOOT_SIZE; off < g.mem_bytes; off += PAGE) {
        // The guest writes each block's base address into each page of the block.
        uint64_t seen, want = off & ~(g.block_pages * PAGE - 1);
        memcpy(&seen, g.guest + off, sizeof seen);
        if (seen != want || memcmp(g.guest + off + 8, g.source + off + 8, 64))
            die("page at %#lx: wrong content after the trial", off);
    }

    for (int i = 0; i < g.nvcpus; i++) {
        munmap(vcpus[i].run, run_size);
        close(vcpus[i].fd);
        if (vcpus[i].uffd >= 0)
            close(vcpus[i].uffd);
    }
    pthread_barrier_destroy(&g.go);
    close(g.stop_fd);
    free(cpuid);
    munmap(g.guest, g.mem_bytes);
    if (g.shmem) {
        munmap(g.alias, g.mem_bytes);
        close(memfd);
    }
    close(vm);
    close(kvm);
    return pages / (last - first);
}

// A trial that hangs (a vCPU that never reaches DONE) is a failure, not a slow result.
#define TRIAL_TIMEOUT_S 300
#define STR2(x) #x
#define STR(x) STR2(x)

static void timed_out(int sig) {
    static const char why[] = "demand_paging: a trial did not finish within " STR(TRIAL_TIMEOUT_S) " s\n";
    (void)sig;
    if (write(2, why, sizeof why - 1) < 0)
        _exit(1);
    _exit(1);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    g.mode = EXIT;
    g.shmem = 1;
    g.nvcpus = 1;
    g.mem_per_vcpu = 128ul << 20;
    g.pin = 1;
    int repeat = 5, opt;
    g.block_pages = BLOCK_PAGES;
    while ((opt = getopt(argc, argv, "M:b:v:m:r:ng:")) != -1) {
        switch (opt) {
        case 'M':
            if (!strcmp(optarg, "prefill"))
                g.mode = PREFILL;
            else if (!strcmp(optarg, "uffd"))
                g.mode = UFFD;
            else if (!strcmp(optarg, "exit"))
                g.mode = EXIT;
            else
                die("-M %s: expected prefill, uffd or exit", optarg);
            break;
        case 'b':
            if (strcmp(optarg, "anon") && strcmp(optarg, "shmem"))
                die("-b %s: expected anon or shmem", optarg);
            g.shmem = !strcmp(optarg, "shmem");
            break;
        case 'v':
            g.nvcpus = atoi(optarg);
            if (g.nvcpus < 1 || g.nvcpus > MAX_VCPUS)
                die("-v %s: expected 1 to %d", optarg, MAX_VCPUS);
            break;
        case 'm':
            g.mem_per_vcpu = strtoull(optarg, NULL, 10) << 20;
            if (!g.mem_per_vcpu)
                die("-m %s: expected a whole number of MiB", optarg);
            break;
        case 'r':
            repeat = atoi(optarg);
            if (repeat < 1 || repeat > 99)
                die("-r %s: expected 1 to 99", optarg);
            break;
        case 'n':
            g.pin = 0;
            break;
        case 'g':
            // simple: a four-instruction loop per page, as a plain guest would be written.
            if (strcmp(optarg, "simple") && strcmp(optarg, "unrolled"))
                die("-g %s: expected unrolled or simple", optarg);
            g.block_pages = strcmp(optarg, "simple") ? BLOCK_PAGES : 1;
            break;
        default:
            die("usage: demand_paging [-M prefill|uffd|exit] [-b anon|shmem] [-v VCPUS] "
                "[-m MIB_PER_VCPU] [-r REPEAT] [-n] [-g unrolled|simple]");
        }
    }
    g.mem_bytes = BOOT_SIZE + g.nvcpus * g.mem_per_vcpu;
    // The i-th vCPU (and its handler) goes to the i-th CPU this process may use.
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed))
        die("sched_getaffinity: %s", strerror(errno));
    for (int c = 0; c < CPU_SETSIZE && g.ncpus < 1024; c++)
        if (CPU_ISSET(c, &allowed))
            g.cpus[g.ncpus++] = c;
    // Every page starts with its own address, so the check after a trial sees each page
    // came from here and took the guest's write.
    g.source = map(g.mem_bytes, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1);
    for (uint64_t off = 0; off < g.mem_bytes; off += PAGE)
        for (uint64_t w = 0; w < 16; w++) {
            uint64_t v = off ^ (w * 0x9e3779b97f4a7c15ul);
            memcpy(g.source + off + w * 8, &v, 8);
        }
    signal(SIGALRM, timed_out);
    const char *modes[] = {"prefill", "uffd", "exit"};
    double rates[99];
    for (int t = 0; t < repeat; t++) {
        alarm(TRIAL_TIMEOUT_S);
        rates[t] = trial();
        alarm(0);
        printf("trial %d: mode=%s backing=%s vcpus=%d pages=%lu pages_per_sec=%.0f\n", t + 1,
               modes[g.mode], g.shmem ? "shmem" : "anon", g.nvcpus,
               g.nvcpus * (g.mem_per_vcpu / PAGE), rates[t]);
        fflush(stdout);
    }
    qsort(rates, repeat, sizeof rates[0], cmp);
    printf("median: mode=%s backing=%s vcpus=%d pages_per_sec=%.0f min=%.0f max=%.0f\n",
           modes[g.mode], g.shmem ? "shmem" : "anon", g.nvcpus, rates[repeat / 2], rates[0],
           rates[repeat - 1]);
    return 0;
}
