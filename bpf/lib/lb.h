/* Service load balancing: ClusterIP and NodePort translated per packet.
 *
 * A frontend (cluster IP or, with address 0, a node port on the node's address;
 * port; protocol) names a service entry: its id (also its reverse-NAT id), how
 * many backends it has and its flags. The backend of a new connection comes from
 * the service's Maglev table (hash of the 5-tuple -> slot -> backend id), or from
 * the client's affinity entry when the service has ClientIP affinity; the choice
 * is kept in a service conntrack entry (the connection's tuple before translation,
 * key flag FTH_CT_KEY_SERVICE) so that every later packet goes to the same backend
 * while it exists, whatever happens to the table. The translated connection's own
 * conntrack entry carries the reverse-NAT id: its replies get the frontend back as
 * their source wherever they meet conntrack (from-container for a local client or
 * backend, from-netdev for replies from another node). A service without backends
 * drops with SERVICE_BACKEND_NOT_FOUND (158).
 *
 * Hairpin (Cilium's "loopback LB"): a pod whose connection lands on itself would get a
 * packet from its own address to its own address, which its kernel drops as a martian.
 * Such a connection also gets the service loopback address (fth_lb_loopback_ip,
 * Cilium's 169.254.42.1) as its source, keeping its port; its conntrack entry is
 * keyed on that tuple, so the pod's reply to the loopback address is a reply there and
 * gets the pod back as destination and the frontend as source. As in Cilium, policy
 * is not enforced on it (a pod may always reach itself through a service); conntrack
 * is.
 *
 * The node's own connections to a cluster IP that no socket hook translated leave
 * through the uplink: to-netdev translates them (bpf_host.c) with a source port from
 * the NAT engine, so that their replies, from a pod here (from-container) or from
 * another node (from-netdev), find the reply entry that names the frontend
 * (lb4_nat_reverse).
 *
 * The agent writes every map here; the programs write only conntrack and affinity.
 */
#pragma once
#include "common.h"
#include "conntrack.h"
#include "events.h"
#include "nat.h"

/* Slots of every Maglev table (prime). The agent creates the tables this size. */
const volatile __u32 fth_lb_maglev_m = 1021;
/* Source of hairpin connections (a pod reaching itself through a service), network
 * order; the loader sets it (Cilium's default, 169.254.42.1). */
const volatile __u32 fth_lb_loopback_ip = 0;

#define FTH_LB_F_AFFINITY 0x01  /* sessionAffinity ClientIP */
#define FTH_LB_F_LOCAL    0x02  /* traffic policy Local: local backends, client address kept */
#define FTH_LB_F_NODEPORT 0x04

struct lb4_key {
	__u32 addr;             /* cluster IP (network order); 0 = node port on the node address */
	__u16 port;             /* host order */
	__u8  proto;
	__u8  pad;
};

struct lb4_service {
	__u32 id;               /* service (frontend) id = reverse-NAT id, 1..65535 */
	__u32 count;            /* backends in the Maglev table; 0 = drop 158 */
	__u32 affinity_timeout; /* seconds, with FTH_LB_F_AFFINITY */
	__u8  flags;            /* FTH_LB_F_* */
	__u8  pad[3];
};

struct lb4_backend {
	__u32 addr;             /* network order */
	__u16 port;             /* host order */
	__u8  proto;
	__u8  pad;
};

struct lb4_rev {
	__u32 addr;             /* the frontend's address (the node's for a node port) */
	__u16 port;
	__u16 pad;
};

struct lb4_aff_key {
	__u32 client;           /* network order */
	__u32 svc_id;
};

struct lb4_aff {
	__u64 last_used;        /* monotonic seconds */
	__u32 backend_id;
	__u32 pad;
};

/* Frontends -> services. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 65536);
} fth_lb4_svc_v1 SEC(".maps");

/* Backend id -> address and port. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 65536);
} fth_lb4_be_v1 SEC(".maps");

/* Maglev tables: service id -> an array of fth_lb_maglev_m backend ids. The agent
 * builds a new array and swaps it in, so a lookup never sees half a table. */
struct lb4_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1021);
	__uint(map_flags, BPF_F_INNER_MAP);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 65536);
	__array(values, struct lb4_maglev_inner);
} fth_lb4_mag_v1 SEC(".maps");

/* Reverse NAT: service id -> the frontend replies come from. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_rev);
	__uint(max_entries, 65536);
} fth_lb4_rev_v1 SEC(".maps");

/* ClientIP affinity: (client, service) -> backend and when it was last used.
 * Written by the programs. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_aff_key);
	__type(value, struct lb4_aff);
	__uint(max_entries, 65536);
} fth_lb4_aff_v1 SEC(".maps");

static __always_inline struct lb4_service *lb4_lookup(__u32 addr, __u16 port, __u8 proto)
{
	struct lb4_key k = { .addr = addr, .port = port, .proto = proto };

	/* a pod's address is never a frontend: no hash lookup for pod-to-pod traffic or
	 * the node's packets to pods (addr 0, the node-port key, is not in the CIDR) */
	if ((proto != IPPROTO_TCP && proto != IPPROTO_UDP) || in_cluster_cidr(addr))
		return 0;
	return bpf_map_lookup_elem(&fth_lb4_svc_v1, &k);
}

static __always_inline __u32 lb4_hash(const struct fth_flow *f)
{
	__u32 h = f->saddr ^ 0x9e3779b9;

	h = (h ^ f->daddr) * 0x85ebca6b;
	h ^= h >> 13;
	h = (h ^ (((__u32)f->sport << 16) | f->dport)) * 0xc2b2ae35;
	h ^= h >> 16;
	h = (h ^ f->proto) * 0x27d4eb2d;
	h ^= h >> 15;
	return h;
}

static __always_inline __u32 lb4_maglev(const struct lb4_service *svc, const struct fth_flow *f)
{
	__u32 id = svc->id, slot;
	__u32 *be;
	void *table = bpf_map_lookup_elem(&fth_lb4_mag_v1, &id);

	if (!table || !fth_lb_maglev_m)
		return 0;
	slot = lb4_hash(f) % fth_lb_maglev_m;
	be = bpf_map_lookup_elem(table, &slot);
	return be ? *be : 0;
}

/* The backend of the flow's connection: the one its service conntrack entry names
 * if that backend still exists, else the client's affinity, else Maglev; the choice
 * is recorded. Returns the backend, or 0 with *reason set. *trace gets NEW for a new
 * connection. */
static __always_inline struct lb4_backend *lb4_select(const struct lb4_service *svc, const struct fth_flow *f,
						      __u8 *trace, __u8 *reason)
{
	struct ct_key k = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->proto, .flags = FTH_CT_KEY_SERVICE,
	};
	struct lb4_aff_key ak = { .client = f->saddr, .svc_id = svc->id };
	struct lb4_backend *be = 0;
	struct ct_entry *e = bpf_map_lookup_elem(&fth_ct4_v2, &k);
	__u64 now = ct_now();
	__u32 id = 0;

	*trace = 0;
	/* A SYN after the connection on this tuple closed starts a new one. */
	if (e && (e->flags & FTH_CT_F_CLOSING) && (f->tcp_flags & (FTH_TCP_SYN | FTH_TCP_ACK)) == FTH_TCP_SYN)
		e = 0;
	if (e) {
		id = e->backend_id;
		be = bpf_map_lookup_elem(&fth_lb4_be_v1, &id);
		if (be) {
			if (f->tcp_flags & (FTH_TCP_FIN | FTH_TCP_RST))
				e->flags |= FTH_CT_F_CLOSING;
			e->expires = now + ct_lifetime(f, e->flags);
			ct_account(&e->tx_packets, &e->tx_bytes, f->len);
			goto affinity;
		}
	}
	*trace = FTH_TRACE_NEW;
	if (svc->count == 0) {
		*reason = FTH_DROP_SERVICE_BACKEND_NOT_FOUND;
		return 0;
	}
	if (svc->flags & FTH_LB_F_AFFINITY) {
		struct lb4_aff *a = bpf_map_lookup_elem(&fth_lb4_aff_v1, &ak);

		if (a && a->last_used + svc->affinity_timeout >= now) {
			id = a->backend_id;
			be = bpf_map_lookup_elem(&fth_lb4_be_v1, &id);
		}
	}
	if (!be) {
		id = lb4_maglev(svc, f);
		be = id ? bpf_map_lookup_elem(&fth_lb4_be_v1, &id) : 0;
	}
	if (!be) {
		*reason = FTH_DROP_SERVICE_BACKEND_NOT_FOUND;
		return 0;
	}
	{
		struct ct_entry n = {
			.tx_packets = 1, .tx_bytes = f->len, .backend_id = id,
			.rev_nat_id = (__u16)svc->id, .tx_flags_seen = f->tcp_flags,
		};
		n.expires = now + ct_lifetime(f, 0);
		if (bpf_map_update_elem(&fth_ct4_v2, &k, &n, BPF_ANY) < 0) {
			*reason = FTH_DROP_CT_CREATE_FAILED;
			return 0;
		}
	}
affinity:
	if (svc->flags & FTH_LB_F_AFFINITY) {
		struct lb4_aff a = { .last_used = now, .backend_id = id };
		bpf_map_update_elem(&fth_lb4_aff_v1, &ak, &a, BPF_ANY);
	}
	return be;
}

/* A pod's packet to a cluster IP (or to a node port on this node's address):
 * DNAT to the chosen backend. c->flow becomes the translated flow and c->rev_nat_id
 * the service's id. When the backend is the pod itself (hairpin), the source becomes
 * the loopback address too: c->flow.saddr and c->xlated_saddr are then
 * fth_lb_loopback_ip. Returns 0 (translated, or not for a service) or a drop reason. */
static __always_inline int lb4_from_pod(struct __sk_buff *skb, struct fth_ctx *c)
{
	struct lb4_service *svc;
	struct lb4_backend *be;
	__u8 trace, reason = 0;
	int ret;

	svc = lb4_lookup(c->flow.daddr, c->flow.dport, c->flow.proto);
	if (!svc && c->flow.daddr == fth_node_ip)
		svc = lb4_lookup(0, c->flow.dport, c->flow.proto);
	if (!svc)
		return 0;
	be = lb4_select(svc, &c->flow, &trace, &reason);
	if (!be)
		return reason;
	c->rev_nat_id = (__u16)svc->id;
	ret = nat_rewrite(skb, &c->flow, 1, be->addr, be->port);
	if (ret || c->flow.daddr != c->flow.saddr || !fth_lb_loopback_ip)
		return ret;
	c->xlated_saddr = fth_lb_loopback_ip;
	return nat_rewrite(skb, &c->flow, 0, fth_lb_loopback_ip, c->flow.sport);
}

/* Is this (conntrack) reply one of a hairpin connection, on its way back to the pod
 * that sent it? */
static __always_inline int lb4_is_hairpin_reply(const struct fth_ctx *c)
{
	return c->is_reply && c->rev_nat_id && fth_lb_loopback_ip && c->flow.daddr == fth_lb_loopback_ip;
}

/* A reply of a translated connection (conntrack said so and gave c->rev_nat_id):
 * its source becomes the frontend again; a hairpin reply also gets its pod (its own
 * source) back as destination. c->flow keeps the addresses before (events report the
 * new source as xlated_saddr). Returns 0 or a drop reason. */
static __always_inline int lb4_reverse(struct __sk_buff *skb, struct fth_ctx *c)
{
	__u32 id = c->rev_nat_id;
	struct fth_flow f = c->flow;
	struct lb4_rev *rev;
	int ret;

	if (!c->is_reply || !id)
		return 0;
	rev = bpf_map_lookup_elem(&fth_lb4_rev_v1, &id);
	if (!rev)
		return 0;       /* the service is gone: the reply goes on untranslated */
	if (lb4_is_hairpin_reply(c)) {
		ret = nat_rewrite(skb, &f, 1, f.saddr, f.dport);
		if (ret)
			return ret;
	}
	c->xlated_saddr = rev->addr;
	return nat_rewrite(skb, &f, 0, rev->addr, rev->port);
}

/* A reply to a connection this node translated and source-NATed to its own address
 * (a node port sent to a backend on another node; the node's own connection to a
 * cluster IP): *f (a copy of c->flow) gets its original destination back, and the
 * frontend as its source when the connection was for a service. Returns 1 when it was
 * such a reply (c->rev_nat_id, c->xlated_saddr set), 0 when not, or a negative drop
 * reason. */
static __always_inline int lb4_nat_reverse(struct __sk_buff *skb, struct fth_ctx *c, struct fth_flow *f)
{
	__u16 rev_id = 0;
	__u32 id;
	struct lb4_rev *rev;
	int ret = snat4_reverse(skb, f, &rev_id);

	if (ret <= 0)
		return ret;
	c->rev_nat_id = rev_id;
	id = rev_id;
	rev = id ? bpf_map_lookup_elem(&fth_lb4_rev_v1, &id) : 0;
	if (rev) {
		c->xlated_saddr = rev->addr;
		ret = nat_rewrite(skb, f, 0, rev->addr, rev->port);
		if (ret)
			return -ret;
	}
	return 1;
}
