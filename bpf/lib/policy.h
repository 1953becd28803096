/* Policy: may this endpoint talk to that identity on this protocol and port?
 *
 * One LPM trie for all endpoints of the node. The key's fixed part (endpoint id,
 * remote identity, direction) is always matched in full; protocol and port are
 * the prefix: 72 bits = any protocol, 80 = protocol with any port, 80 + n = a
 * port block of 2^(16-n) ports (the agent splits ranges into such blocks).
 * The agent resolves deny precedence before writing, so the datapath takes:
 *
 *   0. an entry for the exact remote identity, protocol and port, from a hash the
 *      agent keeps beside the trie with every such entry (the most common kind, one
 *      rule allowing one peer on one port): it is the longest match there can be,
 *      found without walking the trie (a walk is a cache miss per node: a trie of
 *      1,000 entries made a connection's first packet cost microseconds), else
 *   1. the longest match with the exact remote identity, else
 *   2. the longest match with remote identity 0 (any);
 *   3. no match: allowed, unless the endpoint enforces policy in that direction
 *      (then POLICY_DENIED 133). A matching deny entry is POLICY_DENY 181.
 *
 * An endpoint in lockdown drops everything (ENDPOINT_LOCKDOWN).
 */
#pragma once
#include "common.h"
#include "endpoints.h"

#define FTH_POLICY_FIXED_BITS 72  /* ep_id + identity + direction */
#define FTH_POLICY_FULL_BITS  96

struct policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u32 identity;         /* remote identity, 0 = any */
	__u8  direction;        /* FTH_DIR_INGRESS / FTH_DIR_EGRESS */
	__u8  protocol;         /* IPPROTO_*, 0 when prefixlen = 72 */
	__u16 dport;            /* network order */
};

#define FTH_POLICY_ALLOW 0
#define FTH_POLICY_DENY  1

struct policy_value {
	__u8  verdict;          /* FTH_POLICY_* */
	__u8  pad[3];
	__u32 rule_ref;         /* the agent's reference of the rule, for flows and explain */
};

/* Written by the agent (diffs per endpoint); read on the first packet of a flow. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fth_pol4_v1 SEC(".maps");

/* Step 0's entries: the trie's full-length entries (a remote identity, a protocol and
 * one port), keyed without the prefix length. Written by the agent with the trie
 * (the same verdict and rule in both); never holds an entry the trie has not. */
struct policy_exact_key {
	__u32 ep_id;
	__u32 identity;
	__u8  direction;
	__u8  protocol;
	__u16 dport;            /* network order */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_exact_key);
	__type(value, struct policy_value);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fth_pol4x_v1 SEC(".maps");

/* Returns 0 when allowed, else a drop reason. *rule_ref gets the matching rule. */
static __always_inline int policy_check(const struct endpoint_info *ep, __u32 remote_id,
					__u8 dir, const struct fth_flow *f, __u32 *rule_ref)
{
	struct policy_key k = {
		.prefixlen = FTH_POLICY_FULL_BITS,
		.ep_id = ep->ep_id,
		.identity = remote_id,
		.direction = dir,
		.protocol = f->proto,
		.dport = bpf_htons(f->dport),
	};
	struct policy_exact_key x = {
		.ep_id = ep->ep_id,
		.identity = remote_id,
		.direction = dir,
		.protocol = f->proto,
		.dport = bpf_htons(f->dport),
	};
	struct policy_value *v;

	__u32 enforced = dir == FTH_DIR_INGRESS ? FTH_EP_INGRESS_ENFORCED : FTH_EP_EGRESS_ENFORCED;
	__u32 none = dir == FTH_DIR_INGRESS ? FTH_EP_NO_INGRESS_ENTRIES : FTH_EP_NO_EGRESS_ENTRIES;

	*rule_ref = 0;
	if (ep->flags & FTH_EP_LOCKDOWN)
		return FTH_DROP_ENDPOINT_LOCKDOWN;
	/* no entry in this direction (most pods have no egress policy): three lookups
	 * that could only miss are skipped */
	if (ep->flags & none)
		return (ep->flags & enforced) ? FTH_DROP_POLICY_DENIED : 0;
	v = bpf_map_lookup_elem(&fth_pol4x_v1, &x);
	if (!v)
		v = bpf_map_lookup_elem(&fth_pol4_v1, &k);
	if (!v) {
		k.identity = 0;
		v = bpf_map_lookup_elem(&fth_pol4_v1, &k);
	}
	if (v) {
		*rule_ref = v->rule_ref;
		return v->verdict == FTH_POLICY_ALLOW ? 0 : FTH_DROP_POLICY_DENY;
	}
	return (ep->flags & enforced) ? FTH_DROP_POLICY_DENIED : 0;
}
