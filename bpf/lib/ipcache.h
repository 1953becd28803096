/* IP cache: which security identity an address has, and which node hosts it.
 *
 * Longest-prefix match over IPv4 prefixes. The agent writes one /32 per endpoint
 * in the cluster (tunnel endpoint = the hosting node's underlay address, 0 when
 * local), node addresses (host / remote-node) and CIDR identities from policies.
 * An address with no entry is `world`, or `unmanaged` inside the cluster CIDR
 * (an address there that no endpoint owns is not world).
 */
#pragma once
#include "common.h"

struct ipcache_key {
	__u32 prefixlen;        /* 0..32 */
	__u32 addr;             /* network order */
};

struct ipcache_info {
	__u32 identity;
	__u32 tunnel_endpoint;  /* network order; 0 = on this node */
};

/* Written by the agent; read by every program. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_info);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fth_ipc4_v1 SEC(".maps");

/* The trie's /32 entries (every pod of the cluster, the nodes), keyed by address and
 * looked up before the trie: a hash lookup where a walk of a trie holding every pod
 * is a cache miss per level. Written by the agent with the trie (the same value in
 * both); never holds an entry the trie has not. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);                     /* address, network order */
	__type(value, struct ipcache_info);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fth_ipc4x_v1 SEC(".maps");

/* The address's identity; *node gets the node hosting it (its tunnel endpoint, network
 * order), 0 when the ipcache names none (this node, or not a pod of the cluster). */
static __always_inline __u32 ipcache_lookup(__u32 addr, __u32 *node)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	struct ipcache_info *v = bpf_map_lookup_elem(&fth_ipc4x_v1, &addr);

	if (!v)
		v = bpf_map_lookup_elem(&fth_ipc4_v1, &k);

	*node = 0;
	if (v) {
		*node = v->tunnel_endpoint;
		return v->identity;
	}
	if (addr == fth_node_ip || addr == fth_router_ip)
		return FTH_ID_HOST;
	if (in_cluster_cidr(addr))
		return FTH_ID_UNMANAGED;
	return FTH_ID_WORLD;
}

static __always_inline __u32 ipcache_identity(__u32 addr)
{
	__u32 node;

	return ipcache_lookup(addr, &node);
}
