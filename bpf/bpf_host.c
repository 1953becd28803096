/* Program on the node's uplink.
 *
 * from-netdev (tcx ingress): packets from other nodes and the outside. One for a
 * pod on this node passes the pod's ingress policy (or its conntrack entry) and
 * is delivered straight into the pod (bpf_redirect_peer); everything else is the
 * node's and goes to the kernel stack untouched.
 */
#include "lib/common.h"
#include "lib/ipcache.h"
#include "lib/endpoints.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/ingress.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int from_netdev_ipv4(struct __sk_buff *skb, struct fth_ctx *c)
{
	struct endpoint_info *dst;
	__u8 trace;
	int ret;

	ret = parse_ipv4(skb, &c->flow);
	if (!c->flow.daddr)
		return TC_ACT_OK;
	dst = endpoint_lookup(c->flow.daddr);
	if (!dst)
		return TC_ACT_OK;       /* the node's own traffic, or routed on */
	c->endpoint_id = dst->ep_id;
	c->dst_identity = dst->identity;
	c->src_identity = ipcache_identity(c->flow.saddr);
	if (ret)
		return drop(skb, c, ret, FTH_DIR_INGRESS);
	if (dst->flags & FTH_EP_LOCKDOWN)
		return drop(skb, c, FTH_DROP_ENDPOINT_LOCKDOWN, FTH_DIR_INGRESS);
	ret = ct_and_policy(c, 0, dst, &trace);
	if (ret)
		return drop(skb, c, ret, c->direction);
	ret = endpoint_deliver(skb, dst);
	if (ret < 0)
		return drop(skb, c, -ret, FTH_DIR_INGRESS);
	return forward(skb, c, trace, ret);
}

SEC("tc")
int fth_from_netdev(struct __sk_buff *skb)
{
	struct fth_ctx c = { .obs_point = FTH_OBS_FROM_NETDEV, .direction = FTH_DIR_INGRESS };

	if (!is_ipv4(skb))
		return TC_ACT_OK;
	return from_netdev_ipv4(skb, &c);
}
