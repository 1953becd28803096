/* The one translation engine: rewriting addresses and ports with their checksums,
 * and source NAT with one port allocator. NodePort uses it to send a packet to a
 * backend on another node from the node's own address; masquerade and the egress
 * gateway (lib/egress.h) use the same map and allocator.
 *
 * A source-NATed connection has two entries in fth_nat4_v1: the outgoing tuple
 * (after any DNAT) -> the address and port it leaves with, and the tuple of its
 * replies -> the original source (and the service frontend to put back as the
 * replies' source, for NodePort). Ports come from FTH_NAT_PORT_MIN..MAX: below the
 * node-port range (30000-32767) and Linux's ephemeral range (32768-60999), so a reply
 * tuple never meets a node port or one of the node's own client sockets (a server
 * listening in that range is not at risk: it does not connect out from its listening
 * port). 28,976 ports per destination address and port; an allocation takes a random
 * port and retries on a taken reply tuple; the port of a connection that closed and
 * stayed quiet for FTH_NAT_REUSE_AFTER seconds is free again (as a TIME_WAIT socket's).
 * Entries are LRU: a full map evicts the least recently used connections; the agent
 * frees idle pairs.
 */
#pragma once
#include "common.h"
#include "conntrack.h"

#define FTH_NAT_PORT_MIN 1024
#define FTH_NAT_PORT_MAX 29999
#define FTH_NAT_RETRIES  32
#define FTH_NAT_REUSE_AFTER 2   /* seconds a closed connection keeps its port */

#define FTH_NAT_OUT 1           /* key is the outgoing tuple */
#define FTH_NAT_IN  2           /* key is the reply tuple */

struct nat_key {
	__u32 saddr;            /* network order */
	__u32 daddr;
	__u16 sport;            /* host order */
	__u16 dport;
	__u8  proto;
	__u8  dir;              /* FTH_NAT_OUT / FTH_NAT_IN */
	__u8  pad[2];
};

struct nat_entry {
	__u32 addr;             /* OUT: new source; IN: original source (network order) */
	__u16 port;             /*   and its port (host order) */
	__u16 rev_nat_id;       /* IN: frontend to restore as the reply's source, 0 none */
	__u64 created;          /* monotonic seconds it was last used (refreshed by every
	                         * packet; FTH_NAT_CLOSING set once a FIN or RST passed):
	                         * the agent frees a pair that stayed idle long enough */
};

#define FTH_NAT_CLOSING (1ULL << 63)

/* Marks an entry used now (keeping, or setting on FIN/RST, its closing mark). */
static __always_inline void nat_touch(struct nat_entry *e, const struct fth_flow *f)
{
	__u64 closing = e->created & FTH_NAT_CLOSING;

	if (f->proto == IPPROTO_TCP && (f->tcp_flags & (FTH_TCP_FIN | FTH_TCP_RST)))
		closing = FTH_NAT_CLOSING;
	e->created = ct_now() | closing;
}

/* Written by the programs (allocation); read by the agent (dumps). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
	__uint(max_entries, 131072);    /* 65,536 connections */
} fth_nat4_v1 SEC(".maps");

#define FTH_IP_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define FTH_IP_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define FTH_IP_CSUM_OFF  (ETH_HLEN + offsetof(struct iphdr, check))

/* Offset of the L4 header, or a negative drop reason. */
static __always_inline int l4_offset(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end)
		return -FTH_DROP_INVALID_PACKET;
	return ETH_HLEN + ip->ihl * 4;
}

/* Rewrites the source (is_dst 0) or destination (is_dst 1) address and TCP/UDP port
 * of the packet and fixes the IPv4 and L4 checksums incrementally (a UDP checksum
 * of 0 stays 0). Returns 0 or a drop reason; packet pointers are invalid afterwards. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct fth_flow *f, int is_dst,
				       __u32 new_addr, __u16 new_port)
{
	__u32 old_addr = is_dst ? f->daddr : f->saddr;
	__u16 old_port = is_dst ? f->dport : f->sport;
	__u16 old_port_n = bpf_htons(old_port), new_port_n = bpf_htons(new_port);
	int l4 = l4_offset(skb), csum_off, flags;

	if (l4 < 0)
		return -l4;
	switch (f->proto) {
	case IPPROTO_TCP:
		csum_off = l4 + 16;
		flags = 0;
		break;
	case IPPROTO_UDP:
		csum_off = l4 + 6;
		flags = BPF_F_MARK_MANGLED_0;
		break;
	default:
		return FTH_DROP_UNKNOWN_L4_PROTOCOL;
	}
	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, flags | BPF_F_PSEUDO_HDR | 4) < 0)
			return FTH_DROP_ERROR_WRITING_TO_PACKET;
		if (bpf_l3_csum_replace(skb, FTH_IP_CSUM_OFF, old_addr, new_addr, 4) < 0)
			return FTH_DROP_ERROR_WRITING_TO_PACKET;
		if (bpf_skb_store_bytes(skb, is_dst ? FTH_IP_DADDR_OFF : FTH_IP_SADDR_OFF, &new_addr, 4, 0) < 0)
			return FTH_DROP_ERROR_WRITING_TO_PACKET;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port_n, new_port_n, flags | 2) < 0)
			return FTH_DROP_ERROR_WRITING_TO_PACKET;
		if (bpf_skb_store_bytes(skb, l4 + (is_dst ? 2 : 0), &new_port_n, 2, 0) < 0)
			return FTH_DROP_ERROR_WRITING_TO_PACKET;
	}
	if (is_dst) {
		f->daddr = new_addr;
		f->dport = new_port;
	} else {
		f->saddr = new_addr;
		f->sport = new_port;
	}
	return 0;
}

/* Source NAT of a packet of flow *f to nat_addr: the connection's port, or a new one.
 * rev_nat_id is the frontend to restore as the source of replies (0 for none).
 * Returns 0 or a drop reason (NO_MAPPING_FOR_NAT_MASQUERADE when no port is free). */
static __always_inline int snat4(struct __sk_buff *skb, struct fth_flow *f, __u32 nat_addr, __u16 rev_nat_id)
{
	struct nat_key out = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->proto, .dir = FTH_NAT_OUT,
	};
	struct nat_entry *e = bpf_map_lookup_elem(&fth_nat4_v1, &out);
	__u16 port = 0;

	if (e) {
		port = e->port;
		nat_touch(e, f);
	} else {
		struct nat_key in = {
			.saddr = f->daddr, .daddr = nat_addr, .sport = f->dport,
			.proto = f->proto, .dir = FTH_NAT_IN,
		};
		struct nat_entry orig = {
			.addr = f->saddr, .port = f->sport, .rev_nat_id = rev_nat_id, .created = ct_now(),
		};
		int i;

		for (i = 0; i < FTH_NAT_RETRIES; i++) {
			__u16 p = FTH_NAT_PORT_MIN + bpf_get_prandom_u32() % (FTH_NAT_PORT_MAX - FTH_NAT_PORT_MIN + 1);
			struct nat_entry *old;

			in.dport = p;
			if (bpf_map_update_elem(&fth_nat4_v1, &in, &orig, BPF_NOEXIST) == 0) {
				port = p;
				break;
			}
			/* Taken: by a connection that closed and has been quiet for a while?
			 * Then its port is free again, as a TIME_WAIT socket's is (RFC 6191). */
			old = bpf_map_lookup_elem(&fth_nat4_v1, &in);
			if (old && (old->created & FTH_NAT_CLOSING) &&
			    orig.created >= (old->created & ~FTH_NAT_CLOSING) + FTH_NAT_REUSE_AFTER &&
			    bpf_map_update_elem(&fth_nat4_v1, &in, &orig, BPF_EXIST) == 0) {
				port = p;
				break;
			}
		}
		if (!port)
			return FTH_DROP_NO_MAPPING_FOR_NAT_MASQUERADE;
		struct nat_entry xl = { .addr = nat_addr, .port = port, .created = orig.created };
		if (bpf_map_update_elem(&fth_nat4_v1, &out, &xl, BPF_ANY) < 0) {
			bpf_map_delete_elem(&fth_nat4_v1, &in);
			return FTH_DROP_NO_MAPPING_FOR_NAT_MASQUERADE;
		}
	}
	return nat_rewrite(skb, f, 0, nat_addr, port);
}

/* The reply side: a packet whose tuple is the reply of a source-NATed connection
 * gets its original destination back. Returns 1 when translated (*rev_nat_id the
 * frontend to restore as its source), 0 when it is not such a reply, or a negative
 * drop reason. */
static __always_inline int snat4_reverse(struct __sk_buff *skb, struct fth_flow *f, __u16 *rev_nat_id)
{
	struct nat_key in = {
		.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport,
		.proto = f->proto, .dir = FTH_NAT_IN,
	};
	struct nat_entry *e;
	__u32 addr;
	__u16 port;
	int ret;

	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return 0;
	e = bpf_map_lookup_elem(&fth_nat4_v1, &in);
	if (!e)
		return 0;
	addr = e->addr;
	port = e->port;
	*rev_nat_id = e->rev_nat_id;
	nat_touch(e, f);
	ret = nat_rewrite(skb, f, 1, addr, port);
	return ret ? -ret : 1;
}
