/* Common definitions for every Fathom program: load-time settings, reserved
 * identities, directions, and IPv4 packet parsing into a flow tuple.
 *
 * Settings are `const volatile` globals in .rodata that the loader writes before
 * the object is loaded, so one object serves every node. Addresses are in network
 * byte order, as on the wire.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "drop_reasons.h"

/* ---- load-time settings (set by Sources/Datapath before load) ---- */
const volatile __u32 fth_node_ip = 0;           /* node underlay address */
const volatile __u32 fth_router_ip = 0;         /* pods' gateway: first address of the pod CIDR */
const volatile __u32 fth_pod_cidr = 0;          /* this node's pod CIDR (address) */
const volatile __u32 fth_pod_cidr_mask = 0;     /*   and its netmask */
const volatile __u32 fth_cluster_cidr = 0;      /* every node's pods */
const volatile __u32 fth_cluster_cidr_mask = 0;
/* The node's underlay subnet (the uplink's address and prefix): another node's address
 * in it is a next hop the uplink reaches directly (lib/fib.h). Mask all ones, address 0
 * when the agent gave none: no node address matches. */
const volatile __u32 fth_node_net = 0;
const volatile __u32 fth_node_net_mask = 0xffffffff;

/* ---- reserved security identities (Cilium's numbers) ---- */
#define FTH_ID_UNKNOWN   0
#define FTH_ID_HOST      1
#define FTH_ID_WORLD     2
#define FTH_ID_UNMANAGED 3
#define FTH_ID_LOCAL_FLAG (1U << 24) /* node-local CIDR identities */

/* ---- directions: policy, counters and events share them (Cilium's METRIC_*) ---- */
#define FTH_DIR_INGRESS 1
#define FTH_DIR_EGRESS  2

#ifndef TC_ACT_REDIRECT
#define TC_ACT_REDIRECT 7
#endif

/* skb->mark between our own programs (Cilium keeps its MARK_MAGIC_* in the same
 * bits): a pod's packet that from-container already judged and redirected to the
 * uplink (lib/fib.h, fth_uplink_v1), for a destination inside the cluster, on which
 * to-netdev has nothing to do. The mark never leaves the node: to-netdev clears it. */
#define FTH_MARK_MAGIC_MASK 0x0F00
#define FTH_MARK_IN_CLUSTER 0x0E00

#define FTH_TCP_FIN 0x01
#define FTH_TCP_SYN 0x02
#define FTH_TCP_RST 0x04
#define FTH_TCP_ACK 0x10

/* The flow a packet belongs to. Addresses network order, ports host order.
 * ICMP echo uses the echo id as the source port of a request and as the
 * destination port of a reply, so a reply finds the request's entry reversed. */
struct fth_flow {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  tcp_flags;
	__u8  ttl;
	__u8  icmp_type;        /* ICMP only: the message type (for flows) */
	__u32 len;
};

static __always_inline int is_ipv4(struct __sk_buff *skb)
{
	return skb->protocol == bpf_htons(ETH_P_IP);
}

/* A flow's ports from the first 8 bytes of its L4 header at b (the caller checked that
 * they are there): TCP's and UDP's, an ICMP echo's id (the source port of a request, the
 * destination port of a reply: a reply finds its request's entry). Other ICMP messages
 * have none. parse_ipv4 reads a packet's own header with it, ct_related (conntrack.h) the
 * header an ICMP error quotes. */
static __always_inline void l4_ports(__u8 proto, const __u8 *b, struct fth_flow *f)
{
	__u16 id;

	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		f->sport = bpf_ntohs(*(__u16 *)b);
		f->dport = bpf_ntohs(*(__u16 *)(b + 2));
		break;
	case IPPROTO_ICMP:
		id = bpf_ntohs(*(__u16 *)(b + 4));
		if (b[0] == 8)          /* echo request */
			f->sport = id;
		else if (b[0] == 0)     /* echo reply */
			f->dport = id;
		break;
	}
}

/* Parses Ethernet + IPv4 + the L4 header into *f. Returns 0 or a drop reason. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct fth_flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end)
		return FTH_DROP_INVALID_PACKET;
	if (ip->version != 4 || ip->ihl < 5)
		return FTH_DROP_INVALID_PACKET;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->ttl = ip->ttl;
	f->tcp_flags = 0;
	f->icmp_type = 0;
	f->sport = 0;
	f->dport = 0;
	f->len = skb->len;
	/* Fragments are not tracked: a later one carries no L4 header, so its ports (and
	 * policy) cannot be known without a map of the datagrams in flight, which Cilium
	 * keeps and this datapath does not. Every fragment, the first (MF set) included, is
	 * dropped with FRAGMENTATION_NOT_SUPPORTED (Cilium's reason 157), so that no
	 * datagram is half delivered. */
	if (ip->frag_off & bpf_htons(0x1fff | 0x2000))
		return FTH_DROP_FRAGMENTATION_NOT_SUPPORTED;

	__u32 ihl = ip->ihl * 4;
	if (ihl > 60)
		return FTH_DROP_INVALID_PACKET;
	void *l4 = (void *)ip + ihl;

	switch (ip->protocol) {
	case IPPROTO_TCP: {
		__u8 *t = l4;
		if ((void *)(t + 20) > data_end)
			return FTH_DROP_CT_INVALID_HEADER;
		l4_ports(IPPROTO_TCP, t, f);
		f->tcp_flags = t[13];
		return 0;
	}
	case IPPROTO_UDP: {
		__u8 *u = l4;
		if ((void *)(u + 8) > data_end)
			return FTH_DROP_CT_INVALID_HEADER;
		l4_ports(IPPROTO_UDP, u, f);
		return 0;
	}
	case IPPROTO_ICMP: {
		__u8 *c = l4;
		if ((void *)(c + 8) > data_end)
			return FTH_DROP_CT_INVALID_HEADER;
		f->icmp_type = c[0];
		l4_ports(IPPROTO_ICMP, c, f);
		return 0;
	}
	default:
		return FTH_DROP_UNKNOWN_L4_PROTOCOL;
	}
}

/* Rewrites the Ethernet addresses (re-reading the packet pointers: a helper before
 * may have moved them). Returns 0, or a negative drop reason. */
static __always_inline int eth_set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -FTH_DROP_INVALID_PACKET;
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return 0;
}

/* Decrements the IPv4 TTL as a router does and fixes the header checksum
 * incrementally, in place as the kernel's ip_decrease_ttl() does (the TTL is the high
 * byte of its checksum word: the sum grows by htons(0x0100), with the end-around
 * carry), without a helper call. Returns 0, or a drop reason (TTL_EXCEEDED when the
 * packet may not be forwarded: TTL <= 1). */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end)
		return FTH_DROP_INVALID_PACKET;
	if (ip->ttl <= 1)
		return FTH_DROP_TTL_EXCEEDED;

	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
	return 0;
}

static __always_inline int in_pod_cidr(__u32 addr)
{
	return (addr & fth_pod_cidr_mask) == fth_pod_cidr;
}

static __always_inline int in_cluster_cidr(__u32 addr)
{
	return (addr & fth_cluster_cidr_mask) == fth_cluster_cidr;
}
