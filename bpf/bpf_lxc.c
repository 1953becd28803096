/* Programs on a pod's host-side veth.
 *
 * from-container (tcx ingress): everything the pod sends. Checks the source is
 * the pod; translates a packet for a service (cluster IP, or a node port on this
 * node's address) to its backend (lib/lb.h), so that what follows sees the backend;
 * checks the pod's egress policy, and for a pod on this node also the
 * destination's ingress policy, then delivers it straight into that pod
 * (bpf_redirect_peer). Anything else (remote pods, node addresses, outside) is
 * forwarded by the program on the kernel FIB's word (bpf_fib_lookup, then
 * bpf_redirect / bpf_redirect_neigh to the egress device, lib/fib.h); what the
 * FIB does not forward (the node's own addresses, unreachable, ...) goes up the
 * stack. A reply of a translated connection (a backend answering) gets the
 * service frontend back as its source. A pod whose service connection lands on
 * itself (hairpin) gets it from the service loopback address, without policy, as
 * in Cilium; its reply comes back here and is delivered to it with the frontend as
 * source (lib/lb.h). A reply to the node's own connection to a cluster IP (source-
 * NATed on the uplink) gets its original destination and the frontend back before
 * it goes up the stack. ARP always passes; other non-IPv4 traffic is dropped.
 *
 * to-container (tcx egress): what the kernel stack delivers to the pod (from the
 * node itself, or routed, or redirected here by another pod's from-container);
 * traffic redirected into a pod (bpf_redirect_peer) never gets here.
 */
#include "lib/common.h"
#include "lib/ipcache.h"
#include "lib/endpoints.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/ingress.h"
#include "lib/fib.h"
#include "lib/lb.h"
#include "lib/egress.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int from_container_ipv4(struct __sk_buff *skb, struct fth_ctx *c)
{
	struct endpoint_info *src, *dst;
	struct fth_flow f;
	__u8 trace;
	int ret, hairpin;

	ret = parse_ipv4(skb, &c->flow);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_EGRESS);
	src = endpoint_lookup(c->flow.saddr);
	if (!src || src->ifindex != skb->ingress_ifindex)
		return drop(skb, c, FTH_DROP_INVALID_SOURCE_IP, FTH_DIR_EGRESS);
	c->endpoint_id = src->ep_id;
	c->src_identity = src->identity;
	if (src->flags & FTH_EP_LOCKDOWN)
		return drop(skb, c, FTH_DROP_ENDPOINT_LOCKDOWN, FTH_DIR_EGRESS);

	ret = lb4_from_pod(skb, c);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_EGRESS);
	hairpin = c->xlated_saddr && c->xlated_saddr == fth_lb_loopback_ip;
	dst = endpoint_lookup(c->flow.daddr);
	if (dst)
		c->dst_identity = dst->identity;
	else
		c->lazy |= FTH_LAZY_DST;        /* looked up when a policy check or an event needs it */
	if (dst && (dst->flags & FTH_EP_LOCKDOWN)) {
		c->endpoint_id = dst->ep_id;
		return drop(skb, c, FTH_DROP_ENDPOINT_LOCKDOWN, FTH_DIR_INGRESS);
	}

	/* Hairpin: tracked on the loopback tuple, no policy either way (Cilium skips it:
	 * a pod may always reach itself through a service); events show the pod as the
	 * source and the loopback address as the translated one. */
	ret = ct_and_policy(skb, c, hairpin ? 0 : src, hairpin ? 0 : dst, &trace);
	if (hairpin)
		c->flow.saddr = c->flow.daddr;
	if (ret)
		return drop(skb, c, ret, c->direction);
	if (lb4_is_hairpin_reply(c)) {
		dst = src;
		c->dst_identity = src->identity;
		c->lazy &= ~FTH_LAZY_DST;       /* the pod, not the loopback address's identity */
	}
	ret = lb4_reverse(skb, c);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_EGRESS);
	if (!dst) {
		f = c->flow;
		/* a reply to the node's own service connection, source-NATed on the uplink */
		if (c->is_reply && c->flow.daddr == fth_node_ip) {
			ret = lb4_nat_reverse(skb, c, &f);
			if (ret < 0)
				return drop(skb, c, -ret, FTH_DIR_EGRESS);
		}
		/* leaving the cluster through another node's egress gateway: sent there
		 * untranslated (lib/egress.h). Not a reply, nor an ICMP error about a
		 * connection: a connection opened from outside (a node port on this node, say)
		 * is answered the way it came, as Cilium skips the gateway for CT_REPLY and
		 * CT_RELATED. */
		__u8 reason = 0;
		int leaves = egress_leaves_cluster(c->flow.daddr);
		__u32 via = leaves && !c->is_reply && !c->is_related ? egress_next_hop(&c->flow, &reason) : 0;

		if (reason)
			return drop(skb, c, reason, FTH_DIR_EGRESS);
		__u32 oif = 0;

		/* another node's pod (an address of the cluster's pod CIDRs): to that node
		 * without a FIB lookup when it is on the uplink's subnet (lib/fib.h); its
		 * identity comes with the same lookup. Node addresses and the rest take the
		 * FIB, no ipcache lookup. */
		if (!leaves && in_cluster_cidr(f.daddr)) {
			__u32 node;
			__u32 id = ipcache_lookup(f.daddr, &node);
			int done;

			if ((c->lazy & FTH_LAZY_DST) && f.daddr == c->flow.daddr) {
				c->dst_identity = id;
				c->lazy &= ~FTH_LAZY_DST;
			}
			ret = fwd_to_node(skb, node, f.ttl, &done);
			if (ret < 0)
				return drop(skb, c, -ret, FTH_DIR_EGRESS);
			if (done)
				return forward(skb, c, trace, ret);
		}
		ret = fib_forward_ipv4_via(skb, &f, via, &oif);
		if (ret < 0)
			return drop(skb, c, -ret, FTH_DIR_EGRESS);
		/* to another node's pod (or a node address) through the uplink: nothing for
		 * to-netdev to translate; only a redirected packet, never one handed to the
		 * stack, nor one sent out of another device (where no to-netdev takes the
		 * mark off) */
		if (!leaves && ret == TC_ACT_REDIRECT && is_uplink(oif))
			skb->mark = FTH_MARK_IN_CLUSTER;
		return forward(skb, c, trace, ret);
	}
	ret = endpoint_deliver(skb, dst);
	if (ret < 0)
		return drop(skb, c, -ret, FTH_DIR_INGRESS);
	return forward(skb, c, trace, ret);
}

static __always_inline int to_container_ipv4(struct __sk_buff *skb, struct fth_ctx *c)
{
	struct endpoint_info *dst;
	__u8 trace;
	int ret;

	ret = parse_ipv4(skb, &c->flow);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_INGRESS);
	dst = endpoint_lookup(c->flow.daddr);
	if (!dst)
		return drop(skb, c, FTH_DROP_UNKNOWN_TARGET, FTH_DIR_INGRESS);
	c->endpoint_id = dst->ep_id;
	c->dst_identity = dst->identity;
	c->lazy |= FTH_LAZY_SRC;
	if (dst->flags & FTH_EP_LOCKDOWN)
		return drop(skb, c, FTH_DROP_ENDPOINT_LOCKDOWN, FTH_DIR_INGRESS);
	ret = ct_and_policy(skb, c, 0, dst, &trace);
	if (ret)
		return drop(skb, c, ret, c->direction);
	return forward(skb, c, trace, TC_ACT_OK);
}

SEC("tc")
int fth_from_container(struct __sk_buff *skb)
{
	struct fth_ctx c = { .obs_point = FTH_OBS_FROM_CONTAINER, .direction = FTH_DIR_EGRESS };

	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (!is_ipv4(skb))
		return drop(skb, &c, FTH_DROP_UNSUPPORTED_L3_PROTOCOL, FTH_DIR_EGRESS);
	return from_container_ipv4(skb, &c);
}

SEC("tc")
int fth_to_container(struct __sk_buff *skb)
{
	struct fth_ctx c = { .obs_point = FTH_OBS_TO_CONTAINER, .direction = FTH_DIR_INGRESS };

	if (!is_ipv4(skb))
		return TC_ACT_OK;
	return to_container_ipv4(skb, &c);
}
