/* Local endpoints: the pods on this node, one slot per address of the node's pod
 * CIDR (slot = address - first address of the CIDR, host order).
 *
 * Written by the agent when a pod's programs are attached; read to find the
 * source endpoint of a packet from a pod and the destination of a packet to one,
 * twice for most packets: an array slot is a bounds check and a pointer, where a
 * hash lookup hashes the key and walks a bucket. The loader sizes the array to
 * the pod CIDR (at most FTH_EP_MAX_SLOTS); a slot with ep_id 0 is free. The
 * flags say whether policy is enforced per direction, whether the endpoint
 * is in lockdown (its policy did not fit: everything is dropped), and in which
 * directions the agent wrote no policy entry at all (no lookup there: the verdict
 * is enforcement's alone). A flag the agent has not set means "look": an entry
 * written by an older agent, or one without these flags, is never skipped.
 */
#pragma once
#include "common.h"

#define FTH_EP_INGRESS_ENFORCED (1 << 0)
#define FTH_EP_EGRESS_ENFORCED  (1 << 1)
#define FTH_EP_LOCKDOWN         (1 << 2)
#define FTH_EP_NO_INGRESS_ENTRIES (1 << 3)
#define FTH_EP_NO_EGRESS_ENTRIES  (1 << 4)

#define FTH_EP_MAX_SLOTS 65536  /* a /16 pod CIDR per node */

struct endpoint_info {
	__u32 ep_id;            /* 0 = free slot */
	__u32 identity;
	__u32 ifindex;          /* host-side veth */
	__u32 flags;            /* FTH_EP_* */
	__u8  pod_mac[6];
	__u8  host_mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 256); /* set by the loader from the pod CIDR */
} fth_ep4_v2 SEC(".maps");

/* Every local endpoint has an address of this node's pod CIDR: any other address
 * (another node's pod, the outside) is answered without a lookup. */
static __always_inline struct endpoint_info *endpoint_lookup(__u32 addr)
{
	__u32 slot;
	struct endpoint_info *ep;

	if (!in_pod_cidr(addr))
		return 0;
	slot = bpf_ntohl(addr) - bpf_ntohl(fth_pod_cidr);
	ep = bpf_map_lookup_elem(&fth_ep4_v2, &slot);
	return ep && ep->ep_id ? ep : 0;
}

/* Delivers to a local pod: MACs rewritten as the host veth would, TTL
 * decremented as a router would, then straight into the pod's namespace. */
static __always_inline int endpoint_deliver(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	int ret = ipv4_dec_ttl(skb);

	if (ret)
		return -ret;
	ret = eth_set_macs(skb, ep->pod_mac, ep->host_mac);
	if (ret)
		return ret;
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* Hands one of the node's own packets to a local pod from an egress hook (where
 * bpf_redirect_peer cannot be used): MACs rewritten, then out of the pod's host veth,
 * whose to-container program tracks it and checks the pod's ingress policy as for
 * any packet from the node. No TTL change: the node sends it, it does not forward it. */
static __always_inline int endpoint_deliver_from_host(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	int ret = eth_set_macs(skb, ep->pod_mac, ep->host_mac);

	if (ret)
		return ret;
	return bpf_redirect(ep->ifindex, 0);
}
