#define _GNU_SOURCE
#include "shims.h"

#include <errno.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fth_nl_result(int rc) { return rc == 0 ? 0 : errno; }

int fth_nl_setns_net(int fd) { return fth_nl_result(setns(fd, CLONE_NEWNET)); }

int fth_nl_unshare_net(void) { return fth_nl_result(unshare(CLONE_NEWNET)); }

int fth_nl_gettid(void) { return (int)syscall(SYS_gettid); }

int fth_nl_mount_make_rshared(const char *path) {
    return fth_nl_result(mount("", path, "none", MS_SHARED | MS_REC, NULL));
}

int fth_nl_mount_rbind(const char *source, const char *target) {
    return fth_nl_result(mount(source, target, "none", MS_BIND | MS_REC, NULL));
}

int fth_nl_mount_bind(const char *source, const char *target) {
    return fth_nl_result(mount(source, target, "none", MS_BIND, NULL));
}

int fth_nl_umount_detach(const char *path) { return fth_nl_result(umount2(path, MNT_DETACH)); }
