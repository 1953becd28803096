/* Egress: masquerade and the egress gateway, on the one translation engine (lib/nat.h).
 *
 * A pod's packet that leaves the cluster (its destination is `world` or a CIDR
 * identity in the ipcache, and no non-masquerade prefix holds it) leaves with a
 * node's address as its source:
 *   - selected by an egress gateway policy (fth_egw4_v1: pod address x destination
 *     prefix): the pod's node sends it, untranslated, to the gateway node (the
 *     gateway's MAC as next hop); the gateway translates it to the egress IP;
 *   - an excluded destination of such a policy, or no policy: masquerade to the
 *     pod's own node address;
 *   - selected, but no gateway node is alive: dropped (NO_EGRESS_GATEWAY), never
 *     sent out with another source.
 * Translation happens on the uplink: to-netdev for the node's own pods,
 * from-netdev for a pod on another node that chose this node as its gateway.
 * Replies are reverse-translated on from-netdev (nat.h's reply entries) and are
 * never masqueraded: only packets from pod addresses are.
 */
#pragma once
#include "common.h"
#include "ipcache.h"
#include "nat.h"

#define FTH_EGW_F_EXCLUDED   0x01   /* masquerade to the pod's node, not the gateway */
#define FTH_EGW_F_NO_GATEWAY 0x02   /* selected, but no gateway node is alive: drop */

struct egress_key {
	__u32 prefixlen;        /* 32 (the pod) + the destination prefix length */
	__u32 saddr;            /* network order */
	__u32 daddr;
};

struct egress_info {
	__u32 gateway;          /* gateway node's underlay address (network order) */
	__u32 egress_ip;        /* the source the traffic leaves with */
	__u8  flags;            /* FTH_EGW_F_* */
	__u8  pad[3];
};

/* Written by the agent (the egress plan of every pod x destination); read here. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct egress_key);
	__type(value, struct egress_info);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fth_egw4_v1 SEC(".maps");

struct nomasq_key {
	__u32 prefixlen;
	__u32 addr;             /* network order */
};

/* Written by the agent: destinations never masqueraded (the cluster's pod CIDR and
 * configured non-masquerade CIDRs). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct nomasq_key);
	__type(value, __u8);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fth_nomasq4_v1 SEC(".maps");

/* Does a pod's packet to daddr leave the cluster (and so need a node's source)? */
static __always_inline int egress_leaves_cluster(__u32 daddr)
{
	struct nomasq_key k = { .prefixlen = 32, .addr = daddr };
	__u32 id;

	if (in_cluster_cidr(daddr) || bpf_map_lookup_elem(&fth_nomasq4_v1, &k))
		return 0;
	id = ipcache_identity(daddr);
	return id == FTH_ID_WORLD || id >= FTH_ID_LOCAL_FLAG;
}

static __always_inline struct egress_info *egress_lookup(__u32 saddr, __u32 daddr)
{
	struct egress_key k = { .prefixlen = 64, .saddr = saddr, .daddr = daddr };

	return bpf_map_lookup_elem(&fth_egw4_v1, &k);
}

/* Where a pod's packet leaving the cluster goes next: 0 = out of this node (after
 * translation on its uplink), else the gateway node's address to send it to.
 * *reason gets NO_EGRESS_GATEWAY when it must be dropped. */
static __always_inline __u32 egress_next_hop(const struct fth_flow *f, __u8 *reason)
{
	struct egress_info *e = egress_lookup(f->saddr, f->daddr);

	*reason = 0;
	if (!e || (e->flags & FTH_EGW_F_EXCLUDED) || e->gateway == fth_node_ip)
		return 0;
	if (e->flags & FTH_EGW_F_NO_GATEWAY) {
		*reason = FTH_DROP_NO_EGRESS_GATEWAY;
		return 0;
	}
	return e->gateway;
}

/* The source a pod's packet leaving the cluster gets on this node: the egress IP
 * when this node is its gateway, else this node's address; 0 when it must not be
 * translated here (it is on its way to another gateway). *reason as above. */
static __always_inline __u32 egress_source(const struct fth_flow *f, __u8 *reason)
{
	struct egress_info *e = egress_lookup(f->saddr, f->daddr);

	*reason = 0;
	if (!e || (e->flags & FTH_EGW_F_EXCLUDED))
		return fth_node_ip;
	if (e->flags & FTH_EGW_F_NO_GATEWAY) {
		*reason = FTH_DROP_NO_EGRESS_GATEWAY;
		return 0;
	}
	return e->gateway == fth_node_ip ? e->egress_ip : 0;
}

/* Is there already a translation for this outgoing tuple? (A new one is a trace
 * event carrying the translated source.) */
static __always_inline int nat_exists(const struct fth_flow *f)
{
	struct nat_key out = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->proto, .dir = FTH_NAT_OUT,
	};

	return bpf_map_lookup_elem(&fth_nat4_v1, &out) != 0;
}


/* Source-translates a pod's packet (c->flow, kept as it was for the event) to
 * nat_addr; *out is the translated tuple. Returns 0 (c->xlated_saddr set, *trace
 * when the connection is new) or a drop reason. */
static __always_inline int egress_snat(struct __sk_buff *skb, struct fth_ctx *c, __u32 nat_addr,
				       struct fth_flow *out, __u8 *trace)
{
	int fresh, ret;

	*out = c->flow;
	if (out->proto != IPPROTO_TCP && out->proto != IPPROTO_UDP)
		return FTH_DROP_UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE;
	fresh = !nat_exists(out);
	ret = snat4(skb, out, nat_addr, 0);
	if (ret)
		return ret;
	c->xlated_saddr = nat_addr;
	*trace = fresh ? FTH_TRACE_NEW : 0;
	return 0;
}
