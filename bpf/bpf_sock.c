/* Socket-level service translation (cgroup v2 sock_addr hooks), as Cilium's kube-proxy
 * replacement does for pods: a socket that connects or sends to a cluster IP gets the
 * backend's address instead, once, so that its packets need no translation at all.
 *
 *   connect4      TCP and connected UDP: the destination becomes a backend (Maglev slot
 *                 from the socket cookie, so each socket may get another backend);
 *   sendmsg4      unconnected UDP: the same per datagram, sticking to the socket's
 *                 backend while it exists;
 *   recvmsg4      unconnected UDP: replies seem to come from the service address;
 *   getpeername4  the peer is the service address, as the application dialled it.
 *
 * The hooks translate only sockets of network namespaces the agent listed in
 * fth_sock_ns_v1 (its pods), whatever cgroup they are attached to; services with
 * ClientIP affinity, node ports and services without backends are left to the
 * per-packet path (lib/lb.h), which also reports drop 158. Everything else passes
 * untouched. The agent attaches these programs to its own cgroups only.
 */
#include "lib/common.h"
#include "lib/lb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Network namespaces (cookies) whose sockets are translated. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u8);
	__uint(max_entries, 1024);
} fth_sock_ns_v1 SEC(".maps");

struct sock_rev {
	__u32 frontend_addr;    /* network order */
	__u32 backend_addr;
	__u16 frontend_port;    /* host order */
	__u16 backend_port;
	__u32 backend_id;
};

/* Socket cookie -> the translation it got. Written by the programs. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct sock_rev);
	__uint(max_entries, 65536);
} fth_sock_rev_v1 SEC(".maps");

static __always_inline int sock4_translate(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u64 ns = bpf_get_netns_cookie(ctx);
	__u64 cookie;
	__u32 daddr = ctx->user_ip4, id;
	__u16 dport = bpf_ntohs((__u16)ctx->user_port);
	struct lb4_service *svc;
	struct lb4_backend *be = 0;
	struct sock_rev *old, rev = {};

	if (!bpf_map_lookup_elem(&fth_sock_ns_v1, &ns))
		return 1;
	svc = lb4_lookup(daddr, dport, proto);
	if (!svc || !svc->count || (svc->flags & (FTH_LB_F_AFFINITY | FTH_LB_F_NODEPORT)))
		return 1;
	cookie = bpf_get_socket_cookie(ctx);
	old = bpf_map_lookup_elem(&fth_sock_rev_v1, &cookie);
	if (old && old->frontend_addr == daddr && old->frontend_port == dport) {
		id = old->backend_id;
		be = bpf_map_lookup_elem(&fth_lb4_be_v1, &id);
	}
	if (!be) {
		struct fth_flow f = {
			.saddr = (__u32)cookie, .daddr = daddr, .sport = (__u16)(cookie >> 32),
			.dport = dport, .proto = proto,
		};
		id = lb4_maglev(svc, &f);
		be = id ? bpf_map_lookup_elem(&fth_lb4_be_v1, &id) : 0;
		if (!be)
			return 1;
	}
	rev.frontend_addr = daddr;
	rev.frontend_port = dport;
	rev.backend_addr = be->addr;
	rev.backend_port = be->port;
	rev.backend_id = id;
	bpf_map_update_elem(&fth_sock_rev_v1, &cookie, &rev, BPF_ANY);
	ctx->user_ip4 = be->addr;
	ctx->user_port = bpf_htons(be->port);
	return 1;
}

/* The service address back where the application sees its peer. */
static __always_inline int sock4_reverse(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_rev *rev = bpf_map_lookup_elem(&fth_sock_rev_v1, &cookie);

	if (rev && ctx->user_ip4 == rev->backend_addr && bpf_ntohs((__u16)ctx->user_port) == rev->backend_port) {
		ctx->user_ip4 = rev->frontend_addr;
		ctx->user_port = bpf_htons(rev->frontend_port);
	}
	return 1;
}

SEC("cgroup/connect4")
int fth_sock_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	return sock4_translate(ctx, (__u8)ctx->protocol);
}

SEC("cgroup/sendmsg4")
int fth_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_translate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int fth_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}

SEC("cgroup/getpeername4")
int fth_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}
