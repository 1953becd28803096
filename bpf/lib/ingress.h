/* Ingress to a local endpoint: the decision from-netdev and to-container share.
 *
 * A packet for a pod on this node passes when its connection is tracked (reply
 * or established) or it is an ICMP error about one (related), else when the pod's
 * ingress policy allows the source identity (traffic from the node itself, identity
 * host, is always allowed); then a conntrack entry is created. Returns 0 to go on,
 * or a drop reason (the caller's ctx carries the direction of the failed check).
 */
#pragma once
#include "common.h"
#include "endpoints.h"
#include "policy.h"
#include "conntrack.h"
#include "events.h"

/* A tracked packet's identities for its event, from its conntrack entry (those its
 * connection was allowed with) instead of ipcache lookups; an identity the program
 * knows already (a local endpoint's) is kept, and an entry without them (0) leaves
 * the lookup to ctx_identities(). A remote peer relabelled while its connection
 * lives is reported with the identity the connection was allowed with. */
static __always_inline void ct_identities(struct fth_ctx *c, const struct ct_entry *e, int reply)
{
	__u32 src = reply ? e->dst_identity : e->src_identity;
	__u32 dst = reply ? e->src_identity : e->dst_identity;

	if ((c->lazy & FTH_LAZY_SRC) && src) {
		c->src_identity = src;
		c->lazy &= ~FTH_LAZY_SRC;
	}
	if ((c->lazy & FTH_LAZY_DST) && dst) {
		c->dst_identity = dst;
		c->lazy &= ~FTH_LAZY_DST;
	}
}

/* Tracks the flow; on a new one runs the given policy checks and creates the
 * entry. An ICMP error about a tracked connection passes without either, as that
 * connection's own packets do (ct_related). *trace gets the trace reason to report
 * (0 = none). */
static __always_inline int ct_and_policy(struct __sk_buff *skb, struct fth_ctx *c,
					 const struct endpoint_info *src_ep,
					 const struct endpoint_info *dst_ep, __u8 *trace)
{
	struct ct_entry *e = 0, *old = 0;
	__u8 new_flags;
	int first, ret;
	int state = ct_lookup(&c->flow, &new_flags, &first, &e);

	*trace = 0;
	/* a SYN from the end that answered the connection on this tuple (ct_lookup): its
	 * entry is made afresh below if policy allows */
	if (state == FTH_CT_NEW && e)
		old = e;
	if (state == FTH_CT_REPLY) {
		c->is_reply = 1;
		if (e)
			c->rev_nat_id = e->rev_nat_id;
		if (first || (new_flags & fth_trace_flags)) {
			*trace = FTH_TRACE_REPLY;
			if (e)
				ct_identities(c, e, 1);
		}
		return 0;
	}
	/* A new connection on the tuple of an old one: the tuple was translated
	 * differently (a client port reused between a pod and a service address), or a
	 * SYN follows the old connection's close. It is new: policy is checked again
	 * and the entry made afresh, in place. */
	if (state == FTH_CT_ESTABLISHED && e &&
	    (e->rev_nat_id != c->rev_nat_id ||
	     ((c->flow.tcp_flags & (FTH_TCP_SYN | FTH_TCP_ACK)) == FTH_TCP_SYN && ct_closing_started(e)))) {
		state = FTH_CT_NEW;
		old = e;
	}
	/* An ICMP error on a tuple of its own that policy let through before (the ICMP
	 * between two addresses, ports 0) is that flow's; a new one may be related. Each
	 * related error is reported (its sender's kernel rate-limits them). */
	if (state == FTH_CT_NEW && c->flow.proto == IPPROTO_ICMP && icmp_is_error(c->flow.icmp_type) &&
	    ct_related(skb, &c->flow)) {
		c->is_related = 1;
		*trace = FTH_TRACE_RELATED;
		return 0;
	}
	if (state == FTH_CT_ESTABLISHED) {
		if (new_flags & fth_trace_flags) {
			*trace = FTH_TRACE_ESTABLISHED;
			if (e)
				ct_identities(c, e, 0);
		}
		return 0;
	}
	ctx_identities(c);
	if (src_ep) {
		ret = policy_check(src_ep, c->dst_identity, FTH_DIR_EGRESS, &c->flow, &c->rule_ref);
		if (ret) {
			c->direction = FTH_DIR_EGRESS;
			return ret;
		}
	}
	if (dst_ep && c->src_identity != FTH_ID_HOST) {
		__u32 rule = 0;
		ret = policy_check(dst_ep, c->src_identity, FTH_DIR_INGRESS, &c->flow, &rule);
		/* a drop names the ingress decision's rule (0 for a default deny), never the
		 * egress rule that let the packet this far */
		if (rule || ret)
			c->rule_ref = rule;
		if (ret) {
			c->direction = FTH_DIR_INGRESS;
			c->endpoint_id = dst_ep->ep_id;
			return ret;
		}
	}
	if (old) {
		ct_reopen(old, &c->flow, c->src_identity, c->dst_identity, c->rule_ref, c->rev_nat_id);
	} else {
		ret = ct_create(&c->flow, c->src_identity, c->dst_identity, c->rule_ref, c->rev_nat_id);
		if (ret)
			return ret;
	}
	*trace = FTH_TRACE_NEW;
	return 0;
}
