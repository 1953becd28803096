/* Forwarding a pod's packet that is not for a pod on this node (another node's
 * pod, a node address, outside) without the kernel stack's forwarding path, as
 * Cilium's eBPF host routing does: the kernel's FIB says where it goes, the
 * program rewrites it as a router would (TTL, MACs) and hands it straight to the
 * egress device.
 *
 *   SUCCESS   the next hop's MAC is known: MACs rewritten, bpf_redirect().
 *   NO_NEIGH  the next hop is not resolved yet: bpf_redirect_neigh() with the
 *             FIB's next hop (the neighbour subsystem resolves it and fills the
 *             Ethernet header).
 *   anything else (NOT_FWDED: a local address such as the node or router IP, or
 *             broadcast; unreachable, prohibit, blackhole, forwarding disabled,
 *             fragmentation needed, lwt encapsulation, an error): TC_ACT_OK, the
 *             stack handles it as before (delivers it locally, or answers with
 *             the right ICMP error).
 *
 * A packet with TTL <= 1 also goes to the stack, which sends ICMP time exceeded.
 * Returns a TC verdict (>= 0) or a negative drop reason.
 */
#pragma once
#include "common.h"

#ifndef AF_INET
#define AF_INET 2
#endif

#define FTH_IPV4_MIN_MTU 68

/* The lookup's key as the packet gives it: family, TOS, protocol and ports. */
static __always_inline void fib_params(struct bpf_fib_lookup *fib, const struct iphdr *ip,
				       const struct fth_flow *f)
{
	fib->family = AF_INET;
	fib->tos = ip->tos;
	fib->l4_protocol = ip->protocol;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) {
		fib->sport = bpf_htons(f->sport);
		fib->dport = bpf_htons(f->dport);
	}
}

/* The FIB found the route but not the next hop's MAC: the neighbour subsystem
 * resolves it (fib->ipv4_dst is now the route's gateway, or still the destination
 * when it is on-link) and fills the Ethernet header. */
static __always_inline int fib_redirect_neigh(const struct bpf_fib_lookup *fib)
{
	struct bpf_redir_neigh nh = {
		.nh_family = AF_INET,
		.ipv4_nh = fib->ipv4_dst,
	};

	if (fib->family != AF_INET)     /* IPv6 next hop: the kernel finds it */
		return bpf_redirect_neigh(fib->ifindex, 0, 0, 0);
	return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
}

/* Writes the MACs the FIB gave; 0 or a negative drop reason. */
static __always_inline int fib_set_macs(struct __sk_buff *skb, const struct bpf_fib_lookup *fib)
{
	return eth_set_macs(skb, fib->dmac, fib->smac);
}

/* The node's uplink: its ifindex, written by the agent before it attaches from-netdev
 * and to-netdev there (0 until then). A packet from-container redirects there for a
 * destination in the cluster carries FTH_MARK_IN_CLUSTER, which to-netdev takes off;
 * one redirected to any other device carries no mark. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} fth_uplink_v1 SEC(".maps");

static __always_inline int is_uplink(__u32 ifindex)
{
	__u32 zero = 0;
	__u32 *uplink = bpf_map_lookup_elem(&fth_uplink_v1, &zero);

	return uplink && *uplink && *uplink == ifindex;
}

/* A pod's packet for a pod on another node, sent to that node directly: the ipcache
 * names the node (`node`, the destination's tunnel endpoint), the agent routes every
 * node's pod CIDR via that node's address on the uplink (Agent.reconcileRoutes), and a
 * node address on the uplink's own subnet is a next hop the kernel would use as it is.
 * So no FIB lookup: the TTL is decremented and the neighbour subsystem resolves the
 * node's MAC (bpf_redirect_neigh), as for an unresolved FIB next hop. *done = 0 (and
 * nothing changed) when the FIB must decide: a node off the subnet or unknown, the
 * uplink not known yet, TTL <= 1 (the stack answers), a packet the uplink's MTU does
 * not take, a GSO packet segment by segment as the stack's own forwarding checks it (the
 * FIB path hands a non-GSO one to the stack for ICMP or fragmentation). Returns a TC
 * verdict, or a negative drop reason. */
static __always_inline int fwd_to_node(struct __sk_buff *skb, __u32 node, __u8 ttl, int *done)
{
	struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = node };
	__u32 zero = 0, mtu_len = 0, *uplink;
	int ret;

	*done = 0;
	if (!node || (node & fth_node_net_mask) != fth_node_net || ttl <= 1)
		return 0;
	uplink = bpf_map_lookup_elem(&fth_uplink_v1, &zero);
	if (!uplink || !*uplink)
		return 0;
	/* A datagram of at most 68 bytes fits every IPv4 link (RFC 791; Linux's least
	 * Ethernet MTU, ETH_MIN_MTU): no device lookup for the SYNs, ACKs and small
	 * requests of a connection. */
	if (skb->len > ETH_HLEN + FTH_IPV4_MIN_MTU &&
	    bpf_check_mtu(skb, *uplink, &mtu_len, 0, BPF_MTU_CHK_SEGS) != BPF_MTU_CHK_RET_SUCCESS)
		return 0;
	ret = ipv4_dec_ttl(skb);
	if (ret)
		return -ret;
	*done = 1;
	skb->mark = FTH_MARK_IN_CLUSTER;
	return bpf_redirect_neigh(*uplink, &nh, sizeof(nh), 0);
}

/* As fib_forward_ipv4, but towards `via` (network order) as the next hop instead of
 * the packet's destination: the egress gateway, where a pod's packet goes
 * untranslated to be translated there. 0 = the destination. *oif gets the device a
 * redirect sends the packet out of. */
static __always_inline int fib_forward_ipv4_via(struct __sk_buff *skb, const struct fth_flow *f, __u32 via,
						__u32 *oif)
{
	struct bpf_fib_lookup fib = {};
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	int rc, ret;

	if ((void *)(ip + 1) > data_end)
		return -FTH_DROP_INVALID_PACKET;
	if (ip->ttl <= 1)
		return TC_ACT_OK;

	fib_params(&fib, ip, f);
	/* tot_len 0: the kernel checks the egress MTU against the skb itself
	 * (is_skb_forwardable, which knows GSO packets) */
	fib.tot_len = 0;
	fib.ifindex = skb->ingress_ifindex;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = via ? via : ip->daddr;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	*oif = fib.ifindex;

	ret = ipv4_dec_ttl(skb);
	if (ret)
		return -ret;

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return fib_redirect_neigh(&fib);
	ret = fib_set_macs(skb, &fib);
	if (ret)
		return ret;
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline int fib_forward_ipv4(struct __sk_buff *skb, const struct fth_flow *f)
{
	__u32 oif;

	return fib_forward_ipv4_via(skb, f, 0, &oif);
}

/* The node's own packet whose destination a program changed on an egress hook (after
 * the stack routed it for the old one): routed again as the stack would for the new
 * destination, with an output lookup and no TTL change (the node sends it, it does
 * not forward it).
 *
 *   SUCCESS   MACs rewritten; the same device: TC_ACT_OK (it goes on where it was
 *             going), another one: bpf_redirect() to its egress.
 *   NO_NEIGH  bpf_redirect_neigh() with the FIB's next hop.
 *   anything else: TC_ACT_OK, it leaves as the stack sent it.
 *
 * Returns a TC verdict or a negative drop reason. */
static __always_inline int fib_reroute_output(struct __sk_buff *skb, const struct fth_flow *f)
{
	struct bpf_fib_lookup fib = {};
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	int rc;

	if ((void *)(ip + 1) > data_end)
		return -FTH_DROP_INVALID_PACKET;
	fib_params(&fib, ip, f);
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return fib_redirect_neigh(&fib);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	rc = fib_set_macs(skb, &fib);
	if (rc)
		return rc;
	if (fib.ifindex == skb->ifindex)
		return TC_ACT_OK;
	return bpf_redirect(fib.ifindex, 0);
}
