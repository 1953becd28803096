/* Program on the node's uplink.
 *
 * from-netdev (tcx ingress): packets from other nodes and the outside, in this
 * order (DESIGN.md, one translation engine):
 *   1. replies to connections this node source-NATed (a node port forwarded to a
 *      backend on another node) get their client back as destination and the node
 *      port as source, and leave again with bpf_fib_lookup + bpf_redirect(_neigh);
 *      a reply to the node's own connection to a cluster IP (translated by
 *      to-netdev) gets its socket's port and the cluster IP back and goes up the
 *      stack;
 *   2. a node port on this node's address is translated to a backend (lib/lb.h): a
 *      local one gets the packet straight (client address kept); a remote one gets
 *      it from this node's address (SNAT, lib/nat.h), unless the service's
 *      externalTrafficPolicy is Local (then only local backends are in its table);
 *   3. one for a pod on this node passes the pod's ingress policy (or its conntrack
 *      entry; a reply of a translated connection gets its frontend back) and is
 *      delivered straight into the pod (bpf_redirect_peer);
 * everything else is the node's and goes to the kernel stack untouched.
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

/* Delivers to a local pod after its ingress policy or conntrack entry. */
static __always_inline int to_local_endpoint(struct __sk_buff *skb, struct fth_ctx *c, struct endpoint_info *dst)
{
	__u8 trace;
	int ret;

	c->endpoint_id = dst->ep_id;
	c->dst_identity = dst->identity;
	if (dst->flags & FTH_EP_LOCKDOWN)
		return drop(skb, c, FTH_DROP_ENDPOINT_LOCKDOWN, FTH_DIR_INGRESS);
	ret = ct_and_policy(skb, c, 0, dst, &trace);
	if (ret)
		return drop(skb, c, ret, c->direction);
	ret = lb4_reverse(skb, c);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_INGRESS);
	ret = endpoint_deliver(skb, dst);
	if (ret < 0)
		return drop(skb, c, -ret, FTH_DIR_INGRESS);
	return forward(skb, c, trace, ret);
}

/* Step 1: a reply to a node port connection this node sent to another node, or to
 * the node's own connection to a cluster IP with a backend on another node.
 * Returns 1 when it was one (*verdict set), 0 when not, or a negative drop reason. */
static __always_inline int nodeport_reply(struct __sk_buff *skb, struct fth_ctx *c, int *verdict)
{
	struct fth_flow f = c->flow;
	int ret = lb4_nat_reverse(skb, c, &f);

	if (ret <= 0)
		return ret;
	c->is_reply = 1;
	c->dst_identity = ipcache_identity(f.daddr);
	/* the node's own connection (its address again): the stack takes it */
	ret = fib_forward_ipv4(skb, &f);
	if (ret < 0)
		return ret;
	*verdict = forward(skb, c, c->flow.tcp_flags & (FTH_TCP_SYN | FTH_TCP_FIN | FTH_TCP_RST) ? FTH_TRACE_REPLY : 0, ret);
	return 1;
}

/* Step 2: a node port. */
static __always_inline int nodeport(struct __sk_buff *skb, struct fth_ctx *c, struct lb4_service *svc)
{
	struct endpoint_info *dst;
	struct lb4_backend *be;
	struct fth_flow f;
	__u8 trace, reason = 0;
	int ret;

	be = lb4_select(svc, &c->flow, &trace, &reason);
	if (!be)
		return drop(skb, c, reason, FTH_DIR_INGRESS);
	c->rev_nat_id = (__u16)svc->id;
	ret = nat_rewrite(skb, &c->flow, 1, be->addr, be->port);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_INGRESS);
	dst = endpoint_lookup(c->flow.daddr);
	if (dst)
		return to_local_endpoint(skb, c, dst);
	if (svc->flags & FTH_LB_F_LOCAL)
		return drop(skb, c, FTH_DROP_SERVICE_BACKEND_NOT_FOUND, FTH_DIR_INGRESS);
	/* A backend on another node: from this node's address, so that its replies
	 * come back here to be translated. */
	c->dst_identity = ipcache_identity(c->flow.daddr);
	f = c->flow;
	ret = snat4(skb, &f, fth_node_ip, (__u16)svc->id);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_INGRESS);
	c->xlated_saddr = fth_node_ip;
	ret = fib_forward_ipv4(skb, &f);
	if (ret < 0)
		return drop(skb, c, -ret, FTH_DIR_INGRESS);
	return forward(skb, c, trace, ret);
}

/* A pod on another node whose egress gateway is this node: translated to the
 * egress IP here and sent on (lib/egress.h). */
static __always_inline int egress_gateway(struct __sk_buff *skb, struct fth_ctx *c)
{
	struct egress_info *e = egress_lookup(c->flow.saddr, c->flow.daddr);
	struct fth_flow f;
	__u8 trace = 0;
	int ret;

	if (!e || e->gateway != fth_node_ip || (e->flags & (FTH_EGW_F_EXCLUDED | FTH_EGW_F_NO_GATEWAY)) ||
	    !egress_leaves_cluster(c->flow.daddr))
		return TC_ACT_OK;       /* not this node's to translate */
	c->src_identity = ctx_source_identity(c);
	c->dst_identity = ipcache_identity(c->flow.daddr);
	c->direction = FTH_DIR_EGRESS;
	ret = egress_snat(skb, c, e->egress_ip, &f, &trace);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_EGRESS);
	ret = fib_forward_ipv4(skb, &f);
	if (ret < 0)
		return drop(skb, c, -ret, FTH_DIR_EGRESS);
	return forward(skb, c, trace, ret);
}

static __always_inline int from_netdev_ipv4(struct __sk_buff *skb, struct fth_ctx *c)
{
	struct endpoint_info *dst;
	struct lb4_service *svc;
	int ret, verdict = TC_ACT_OK;

	ret = parse_ipv4(skb, &c->flow);
	if (!c->flow.daddr)
		return TC_ACT_OK;
	if (!ret && !in_cluster_cidr(c->flow.daddr)) {
		/* 1. replies of connections this node translated: node ports, masquerade,
		 * the egress gateway (to this node's address or an egress IP it holds) */
		c->src_identity = ctx_source_identity(c);
		ret = nodeport_reply(skb, c, &verdict);
		if (ret < 0)
			return drop(skb, c, -ret, FTH_DIR_EGRESS);
		if (ret > 0)
			return verdict;
		if (c->flow.daddr == fth_node_ip) {
			svc = lb4_lookup(0, c->flow.dport, c->flow.proto);
			if (svc)
				return nodeport(skb, c, svc);
			return TC_ACT_OK;       /* the node's own traffic */
		}
		/* 2. egress gateway steering: a pod elsewhere leaving through this node */
		if (in_cluster_cidr(c->flow.saddr))
			return egress_gateway(skb, c);
		return TC_ACT_OK;
	}
	dst = endpoint_lookup(c->flow.daddr);
	if (!dst)
		return TC_ACT_OK;       /* the node's own traffic, or routed on */
	c->endpoint_id = dst->ep_id;
	c->dst_identity = dst->identity;
	c->lazy |= FTH_LAZY_SRC;
	if (ret)
		return drop(skb, c, ret, FTH_DIR_INGRESS);
	return to_local_endpoint(skb, c, dst);
}

SEC("tc")
int fth_from_netdev(struct __sk_buff *skb)
{
	struct fth_ctx c = { .obs_point = FTH_OBS_FROM_NETDEV, .direction = FTH_DIR_INGRESS };

	if (!is_ipv4(skb))
		return TC_ACT_OK;
	return from_netdev_ipv4(skb, &c);
}

/* The node's own connection to a cluster IP, which no socket hook translated (a
 * process outside the agent's cgroup): the stack routed it towards the default gateway.
 * It is translated here to a backend (lib/lb.h), with a source port from the NAT
 * engine (lib/nat.h) so that its replies find a reply entry naming the frontend, and
 * sent where the backend is: a local pod through its host veth (to-container tracks it
 * and applies the pod's ingress policy, host is allowed), another node's pod on the
 * FIB's next hop. Replies come back through from-container or from-netdev. */
static __always_inline int host_to_service(struct __sk_buff *skb, struct fth_ctx *c, struct lb4_service *svc)
{
	struct endpoint_info *dst;
	struct lb4_backend *be;
	struct fth_flow f;
	__u8 trace, reason = 0;
	int ret;

	c->src_identity = FTH_ID_HOST;
	be = lb4_select(svc, &c->flow, &trace, &reason);
	if (!be)
		return drop(skb, c, reason, FTH_DIR_EGRESS);
	c->rev_nat_id = (__u16)svc->id;
	ret = nat_rewrite(skb, &c->flow, 1, be->addr, be->port);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_EGRESS);
	dst = endpoint_lookup(c->flow.daddr);
	c->endpoint_id = dst ? dst->ep_id : 0;
	c->dst_identity = dst ? dst->identity : ipcache_identity(c->flow.daddr);
	f = c->flow;
	ret = snat4(skb, &f, fth_node_ip, (__u16)svc->id);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_EGRESS);
	ret = dst ? endpoint_deliver_from_host(skb, dst) : fib_reroute_output(skb, &f);
	if (ret < 0)
		return drop(skb, c, -ret, FTH_DIR_EGRESS);
	return forward(skb, c, trace, ret);
}

/* to-netdev (tcx egress on the uplink): a pod's packet leaving the cluster gets a
 * node's source here (masquerade, or the egress IP when this node is its gateway);
 * one from-container forwarded to another node's pod carries FTH_MARK_IN_CLUSTER and
 * passes at once (the mark taken off);
 * the node's own packet to a cluster IP is translated to a backend; one on its way
 * to another node's gateway, the node's other traffic and replies pass untouched
 * (lib/egress.h). */
SEC("tc")
int fth_to_netdev(struct __sk_buff *skb)
{
	struct fth_ctx c = { .obs_point = FTH_OBS_TO_NETDEV, .direction = FTH_DIR_EGRESS };
	struct endpoint_info *src;
	struct lb4_service *svc;
	struct fth_flow f;
	__u8 trace = 0, reason = 0;
	__u32 nat_addr;
	int ret;

	if ((skb->mark & FTH_MARK_MAGIC_MASK) == FTH_MARK_IN_CLUSTER) {
		skb->mark = 0;          /* a pod's packet from-container forwarded in the cluster */
		return TC_ACT_OK;
	}
	if (!is_ipv4(skb))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &c.flow))
		return TC_ACT_OK;       /* not a pod's to judge here: from-container did */
	if (c.flow.saddr == fth_node_ip) {
		svc = lb4_lookup(c.flow.daddr, c.flow.dport, c.flow.proto);
		return svc ? host_to_service(skb, &c, svc) : TC_ACT_OK;
	}
	if (!in_cluster_cidr(c.flow.saddr) || !egress_leaves_cluster(c.flow.daddr) || ct_is_reply(&c.flow))
		return TC_ACT_OK;
	src = endpoint_lookup(c.flow.saddr);
	c.endpoint_id = src ? src->ep_id : 0;
	c.src_identity = src ? src->identity : ipcache_identity(c.flow.saddr);
	c.dst_identity = ipcache_identity(c.flow.daddr);
	nat_addr = egress_source(&c.flow, &reason);
	if (reason)
		return drop(skb, &c, reason, FTH_DIR_EGRESS);
	if (!nat_addr)
		return TC_ACT_OK;       /* on its way to its gateway node */
	ret = egress_snat(skb, &c, nat_addr, &f, &trace);
	if (ret)
		return drop(skb, &c, ret, FTH_DIR_EGRESS);
	return forward(skb, &c, trace, TC_ACT_OK);
}
