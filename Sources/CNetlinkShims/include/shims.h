// CNetlinkShims: the rtnetlink UAPI headers and thin wrappers for the namespace and mount
// calls that need _GNU_SOURCE or are macros. Imported only by the `Netlink` module.
//
// Every wrapper returns 0 on success or the errno value on failure (never -1), so the
// Swift side never has to read the thread-local errno after a call it did not make.
#pragma once

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netpacket/packet.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/neighbour.h>
#include <linux/veth.h>

/// setns(fd, CLONE_NEWNET) for the calling thread.
int fth_nl_setns_net(int fd);

/// unshare(CLONE_NEWNET) for the calling thread.
int fth_nl_unshare_net(void);

/// The calling thread's kernel id (gettid).
int fth_nl_gettid(void);

/// mount("", path, "none", MS_SHARED | MS_REC, NULL).
int fth_nl_mount_make_rshared(const char *path);

/// mount(source, target, "none", MS_BIND | MS_REC, NULL).
int fth_nl_mount_rbind(const char *source, const char *target);

/// mount(source, target, "none", MS_BIND, NULL).
int fth_nl_mount_bind(const char *source, const char *target);

/// umount2(path, MNT_DETACH).
int fth_nl_umount_detach(const char *path);
