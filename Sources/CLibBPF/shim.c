#define _GNU_SOURCE
#include "clibbpf.h"
#include <sched.h>

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <bpf/btf.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <unistd.h>

#define FTH_BPF_FS_MAGIC 0xcafe4a11

static fth_bpf_log_handler log_handler;

static int print_fn(enum libbpf_print_level level, const char *fmt, va_list args)
{
    char line[4096];
    fth_bpf_log_handler h = __atomic_load_n(&log_handler, __ATOMIC_ACQUIRE);
    if (!h)
        return 0;
    vsnprintf(line, sizeof(line), fmt, args);
    h((int)level, line);
    return 0;
}

void fth_bpf_set_log_handler(fth_bpf_log_handler handler)
{
    __atomic_store_n(&log_handler, handler, __ATOMIC_RELEASE);
    libbpf_set_print(print_fn);
}

struct bpf_object *fth_bpf_object_open_mem(const void *bytes, size_t size, const char *name)
{
    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name);
    struct bpf_object *obj = bpf_object__open_mem(bytes, size, &opts);
    struct bpf_map *map;

    if (!obj)
        return NULL;
    /* Global data (.rodata settings) in memory the kernel allocates as it does other
     * small arrays, not as a mmap()-able one: libbpf asks for BPF_F_MMAPABLE so that a
     * skeleton can reach the variables from user space, which nothing here does, and
     * mmap()-able map memory is vmalloc()ed in 4 KiB pages: the programs' first read of a
     * setting was a TLB miss per run (7% of from-container's samples, perf). Values are
     * still written before load through bpf_map__initial_value. */
    bpf_object__for_each_map(map, obj) {
        if (bpf_map__is_internal(map))
            bpf_map__set_map_flags(map, bpf_map__map_flags(map) & ~BPF_F_MMAPABLE);
    }
    return obj;
}

int fth_bpf_set_global(struct bpf_object *obj, const char *name, const void *value, size_t size)
{
    struct btf *btf = bpf_object__btf(obj);
    struct bpf_map *map;
    if (!btf)
        return -ENOENT;
    bpf_object__for_each_map(map, obj) {
        if (!bpf_map__is_internal(map))
            continue;
        const char *mname = bpf_map__name(map);
        const char *dot = strchr(mname, '.');   /* "<obj>.rodata" -> ".rodata" */
        if (!dot)
            continue;
        int sec_id = btf__find_by_name_kind(btf, dot, BTF_KIND_DATASEC);
        if (sec_id < 0)
            continue;
        const struct btf_type *sec = btf__type_by_id(btf, sec_id);
        const struct btf_var_secinfo *vs = btf_var_secinfos(sec);
        for (int i = 0; i < btf_vlen(sec); i++, vs++) {
            const struct btf_type *var = btf__type_by_id(btf, vs->type);
            if (strcmp(btf__name_by_offset(btf, var->name_off), name) != 0)
                continue;
            if (vs->size != size)
                return -E2BIG;
            size_t data_size = 0;
            char *data = (char *)bpf_map__initial_value(map, &data_size);
            if (!data || vs->offset + size > data_size)
                return -EINVAL;
            memcpy(data + vs->offset, value, size);
            return 0;
        }
    }
    return -ENOENT;
}

int fth_bpf_link_create_tcx(int prog_fd, int ifindex, int attach_type)
{
    int fd = bpf_link_create(prog_fd, ifindex, (enum bpf_attach_type)attach_type, NULL);
    return fd < 0 ? -errno : fd;
}

int fth_bpf_link_update(int link_fd, int new_prog_fd)
{
    int err = bpf_link_update(link_fd, new_prog_fd, NULL);
    return err < 0 ? -errno : 0;
}

int fth_bpf_prog_test_run(int prog_fd, const void *data_in, uint32_t size_in,
                          void *data_out, uint32_t *size_out,
                          const void *ctx_in, uint32_t ctx_size_in,
                          void *ctx_out, uint32_t ctx_size_out, uint32_t *retval)
{
    LIBBPF_OPTS(bpf_test_run_opts, opts,
        .data_in = data_in, .data_size_in = size_in,
        .data_out = data_out, .data_size_out = *size_out,
        .ctx_in = ctx_in, .ctx_size_in = ctx_size_in,
        .ctx_out = ctx_out, .ctx_size_out = ctx_size_out,
        .repeat = 1);
    int err = bpf_prog_test_run_opts(prog_fd, &opts);
    if (err < 0)
        return -errno;
    *size_out = opts.data_size_out;
    *retval = opts.retval;
    return 0;
}

uint32_t fth_bpf_prog_id(int prog_fd)
{
    struct bpf_prog_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) < 0)
        return 0;
    return info.id;
}

uint32_t fth_bpf_link_prog_id(int link_fd)
{
    struct bpf_link_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (bpf_obj_get_info_by_fd(link_fd, &info, &len) < 0)
        return 0;
    return info.prog_id;
}

int fth_bpf_errno(void)
{
    return errno;
}

int fth_bpf_is_bpffs(const char *path)
{
    struct statfs st;
    if (statfs(path, &st) != 0)
        return 0;
    return (unsigned long)st.f_type == FTH_BPF_FS_MAGIC;
}

int fth_bpf_mount_bpffs(const char *path)
{
    return mount("bpf", path, "bpf", 0, NULL) == 0 ? 0 : -errno;
}

static int fth_ring_sink_record(void *ctx, void *data, size_t size)
{
    struct fth_ring_sink *sink = ctx;
    size_t need = 8 + ((size + 7) & ~(size_t)7);

    sink->ring_bytes += (size + 8 + 7) & ~(size_t)7;
    if (sink->len + need > sink->cap) {
        size_t cap = sink->cap ? sink->cap : 64 * 1024;
        uint8_t *grown;

        while (cap < sink->len + need)
            cap *= 2;
        grown = realloc(sink->buf, cap);
        if (!grown) {
            sink->dropped++;
            return 0;
        }
        sink->buf = grown;
        sink->cap = cap;
    }
    uint32_t len = (uint32_t)size;
    memcpy(sink->buf + sink->len, &len, 4);
    memset(sink->buf + sink->len + 4, 0, 4);
    memcpy(sink->buf + sink->len + 8, data, size);
    sink->len += need;
    sink->records++;
    return 0;
}

struct ring_buffer *fth_ring_buffer_new_sink(int map_fd, struct fth_ring_sink *sink)
{
    return ring_buffer__new(map_fd, fth_ring_sink_record, sink, NULL);
}

void fth_ring_sink_free(struct fth_ring_sink *sink)
{
    free(sink->buf);
    sink->buf = NULL;
    sink->len = sink->cap = 0;
}

int fth_ring_waiter_open(int ring_fd, int fds[3])
{
    struct epoll_event ring = { .events = EPOLLIN | EPOLLET };
    struct epoll_event stop = { .events = EPOLLIN };
    int p[2], ep, err;

    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        err = -errno;
        close(p[0]);
        close(p[1]);
        return err;
    }
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ring_fd, &ring) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &stop) < 0) {
        err = -errno;
        close(ep);
        close(p[0]);
        close(p[1]);
        return err;
    }
    fds[0] = ep;
    fds[1] = p[0];
    fds[2] = p[1];
    return 0;
}

int fth_ring_waiter_wait(int epoll_fd, int timeout_ms)
{
    struct epoll_event ready[2];
    int n = epoll_wait(epoll_fd, ready, 2, timeout_ms);

    return n < 0 ? -errno : n;
}

void fth_ring_waiter_stop(int pipe_write_fd)
{
    char byte = 1;

    (void)!write(pipe_write_fd, &byte, 1);
}

void fth_ring_waiter_close(const int fds[3])
{
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}
