/* CLibBPF: the C side of the BPF module. Thin `fth_bpf_*` wrappers over libbpf for
 * what Swift cannot express (LIBBPF_OPTS macros, va_list logging, BTF walking).
 * Imported by exactly one Swift module, BPF. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>

/* tcx attach types (kernel 6.6); Debian's 6.1 UAPI headers lack them. */
#define FTH_BPF_TCX_INGRESS 46
#define FTH_BPF_TCX_EGRESS 47

/* Routes libbpf's log lines (verifier log included) to `handler`, formatted. */
typedef void (*fth_bpf_log_handler)(int level, const char *line);
void fth_bpf_set_log_handler(fth_bpf_log_handler handler);

/* bpf_object__open_mem with an object name. NULL and errno on failure. */
struct bpf_object *fth_bpf_object_open_mem(const void *bytes, size_t size, const char *name);

/* Writes `size` bytes at the named global of .rodata/.data/.bss, before load.
 * 0, -ENOENT (no such variable), -E2BIG (size mismatch). */
int fth_bpf_set_global(struct bpf_object *obj, const char *name, const void *value, size_t size);

/* bpf_link_create for tcx (attach_type FTH_BPF_TCX_*). Link fd or -errno. */
int fth_bpf_link_create_tcx(int prog_fd, int ifindex, int attach_type);

/* bpf_link_update without flags. 0 or -errno. */
int fth_bpf_link_update(int link_fd, int new_prog_fd);

/* BPF_PROG_TEST_RUN. data_out gets the (possibly rewritten) packet, ctx_out (when
 * given) the context as the program left it. 0 or -errno. */
int fth_bpf_prog_test_run(int prog_fd, const void *data_in, uint32_t size_in,
                          void *data_out, uint32_t *size_out,
                          const void *ctx_in, uint32_t ctx_size_in,
                          void *ctx_out, uint32_t ctx_size_out, uint32_t *retval);

/* The kernel's id of a program or link fd (0 on failure). */
uint32_t fth_bpf_prog_id(int prog_fd);
uint32_t fth_bpf_link_prog_id(int link_fd);

/* 1 when path is on a BPF filesystem; mounting one there (0 or -errno). */
int fth_bpf_is_bpffs(const char *path);
int fth_bpf_mount_bpffs(const char *path);


/* errno of the calling thread. */
int fth_bpf_errno(void);

/* A ring buffer whose records are copied, as consumed, into one growing buffer: a
 * drain's records reach the caller at once, not one callback each. Each record in `buf`
 * is a 4-byte length, 4 bytes of padding, then its bytes, padded to 8. `ring_bytes` adds
 * up what the records took in the ring (its 8-byte header included, rounded to 8);
 * `dropped` counts records that did not fit because the buffer could not grow, since
 * the sink was made. The caller sets `len`, `records` and `ring_bytes` to 0 before
 * each ring_buffer__consume. */
struct fth_ring_sink {
    uint8_t *buf;
    size_t len;
    size_t cap;
    size_t records;
    size_t ring_bytes;
    size_t dropped;
};
struct ring_buffer *fth_ring_buffer_new_sink(int map_fd, struct fth_ring_sink *sink);
void fth_ring_sink_free(struct fth_ring_sink *sink);

/* Waiting on a ring buffer map for a drain: an epoll set holding the ring's fd
 * edge-triggered (readable means "records waiting", which under load is always; an
 * edge is a producer's wake-up) and the read end of a pipe that ends the wait.
 * fds gets the epoll fd, the pipe's read end and its write end. 0 or -errno. */
int fth_ring_waiter_open(int ring_fd, int fds[3]);
/* Waits up to timeout_ms for a wake-up or the pipe; >0 woken, 0 timed out, -errno. */
int fth_ring_waiter_wait(int epoll_fd, int timeout_ms);
/* Ends a wait (and every later one) at once. */
void fth_ring_waiter_stop(int pipe_write_fd);
void fth_ring_waiter_close(const int fds[3]);
