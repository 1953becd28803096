/* Connection tracking: which flows policy has already allowed.
 *
 * One LRU hash per node, keyed by a connection's tuple with its lower (address,
 * port) end first (ct_key_of), so that a packet of either direction finds it with one
 * lookup; FTH_CT_F_SWAPPED on the entry says the initiator is the key's second end.
 * A packet from the initiator is `established`, one to it a `reply`; both pass
 * without a policy lookup. Entries keep the TCP flags seen per direction (a new flag
 * is a trace event), packet and byte counts, the rule that allowed the flow and both
 * identities. `expires` is CLOCK_MONOTONIC seconds; the agent deletes expired
 * entries (LRU eviction is the backstop).
 *
 * Service load balancing (lib/lb.h) keeps two more things here: entries keyed by a
 * connection's tuple before translation with FTH_CT_KEY_SERVICE set, holding the
 * backend chosen for it, and, on the translated connection's entry, the reverse-NAT
 * id its replies are translated back with.
 */
#pragma once
#include "common.h"

#define FTH_CT_LIFETIME_TCP      21600 /* established TCP, as Cilium */
#define FTH_CT_LIFETIME_SYN      60
#define FTH_CT_LIFETIME_CLOSE    10
#define FTH_CT_LIFETIME_NONTCP   60

#define FTH_CT_NEW         0
#define FTH_CT_ESTABLISHED 1
#define FTH_CT_REPLY       2

#define FTH_CT_F_SEEN_REPLY 0x01
#define FTH_CT_F_CLOSING    0x02    /* FIN seen both ways, or an RST: the close lifetime */
#define FTH_CT_F_SWAPPED    0x04    /* key's saddr/sport is the responder's end */

struct ct_key {
	__u32 saddr;            /* network order, the lower end (FTH_CT_F_SWAPPED: the responder) */
	__u32 daddr;
	__u16 sport;            /* host order */
	__u16 dport;
	__u8  proto;
	__u8  flags;            /* FTH_CT_KEY_*: 0 for a connection's own entry */
	__u8  pad[2];
};

#define FTH_CT_KEY_SERVICE 0x01 /* service entry: tuple before DNAT -> backend */

struct ct_entry {
	__u64 expires;          /* monotonic seconds */
	__u64 tx_packets;       /* initiator -> responder */
	__u64 tx_bytes;
	__u64 rx_packets;       /* replies */
	__u64 rx_bytes;
	union {
		__u32 rule_ref;         /* rule that allowed the flow (0 = default allow) */
		__u32 backend_id;       /* service entries: the backend chosen */
	};
	__u32 src_identity;     /* identity of the initiator (both identities: what a later
				 * packet's event reports without an ipcache lookup) */
	__u8  tx_flags_seen;
	__u8  rx_flags_seen;
	__u8  flags;            /* FTH_CT_F_* */
	__u8  pad0;
	__u16 rev_nat_id;       /* translated from this service frontend (lib/lb.h), 0 = none */
	__u8  pad[2];
	__u32 dst_identity;     /* identity of the responder */
	__u32 pad1;
};

/* Written by the programs (create, update) and the agent (expire). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 65536);
} fth_ct4_v2 SEC(".maps");

/* CLOCK_MONOTONIC seconds, from the coarse clock: the tick's time, read without
 * the clock source (every packet of a tracked flow refreshes its expiry, and a
 * TSC read per packet showed in profiles). Within a tick of CLOCK_MONOTONIC, which
 * the agent compares expiries with. */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

static __always_inline __u64 ct_lifetime(const struct fth_flow *f, __u8 flags)
{
	if (f->proto != IPPROTO_TCP)
		return FTH_CT_LIFETIME_NONTCP;
	if (flags & FTH_CT_F_CLOSING)
		return FTH_CT_LIFETIME_CLOSE;
	if (f->tcp_flags & FTH_TCP_SYN && !(f->tcp_flags & FTH_TCP_ACK))
		return FTH_CT_LIFETIME_SYN;
	return FTH_CT_LIFETIME_TCP;
}

/* A connection's key, the same for both directions: the end with the lower (address,
 * port) first, address compared as the 32-bit word it is in memory (any fixed order
 * does). Returns 1 when that is the packet's destination (the key is its tuple
 * reversed). Service entries (lib/lb.h) are keyed by the packet's own tuple. */
static __always_inline int ct_key_of(const struct fth_flow *f, struct ct_key *k)
{
	int swap = f->saddr > f->daddr || (f->saddr == f->daddr && f->sport > f->dport);

	k->saddr = swap ? f->daddr : f->saddr;
	k->daddr = swap ? f->saddr : f->daddr;
	k->sport = swap ? f->dport : f->sport;
	k->dport = swap ? f->sport : f->dport;
	k->proto = f->proto;
	k->flags = 0;
	k->pad[0] = 0;
	k->pad[1] = 0;
	return swap;
}

/* Counts a packet on an entry with plain adds, not atomic ones: a lock-prefixed add
 * waits for every store before it, and the two per packet were 11-12% of
 * from-container's and from-netdev's samples under a connection-per-request load
 * (perf record at the instruction, bench/README.md). The counts are statistics: two
 * CPUs adding to the same direction of one connection at the same instant (its packets
 * are normally handled one at a time) can lose an increment. No verdict depends on
 * them. (Cilium uses atomic adds here, under a note that they are slow.) */
static __always_inline void ct_account(__u64 *packets, __u64 *bytes, __u32 len)
{
	*packets += 1;
	*bytes += len;
}

/* Looks the flow's connection up (one lookup for either direction) and accounts the
 * packet. *new_flags gets the TCP flags not seen before in this packet's direction,
 * and *first is set on the first packet of the reply direction. *out gets the entry
 * found, also when the packet is NEW on its tuple (a SYN from the answering end). */
static __always_inline int ct_lookup(const struct fth_flow *f, __u8 *new_flags, int *first,
				     struct ct_entry **out)
{
	struct ct_key k;
	struct ct_entry *e;
	int swapped = ct_key_of(f, &k);
	int state;

	*new_flags = 0;
	*first = 0;
	e = bpf_map_lookup_elem(&fth_ct4_v2, &k);
	if (!e)
		return FTH_CT_NEW;
	/* from the initiator when the packet's tuple is oriented as the first one was */
	state = swapped == !!(e->flags & FTH_CT_F_SWAPPED) ? FTH_CT_ESTABLISHED : FTH_CT_REPLY;
	*out = e;
	/* A SYN without ACK opens a connection, even from the end that answered the
	 * connection on this tuple: new, the entry left untouched (its expiry too) for
	 * the caller to reopen if policy allows. */
	if (state == FTH_CT_REPLY && (f->tcp_flags & (FTH_TCP_SYN | FTH_TCP_ACK)) == FTH_TCP_SYN)
		return FTH_CT_NEW;
	if (f->tcp_flags & FTH_TCP_RST)
		e->flags |= FTH_CT_F_CLOSING;
	if (state == FTH_CT_REPLY) {
		*first = !(e->flags & FTH_CT_F_SEEN_REPLY);
		e->flags |= FTH_CT_F_SEEN_REPLY;
		*new_flags = f->tcp_flags & ~e->rx_flags_seen;
		e->rx_flags_seen |= f->tcp_flags;
		ct_account(&e->rx_packets, &e->rx_bytes, f->len);
	} else {
		*new_flags = f->tcp_flags & ~e->tx_flags_seen;
		e->tx_flags_seen |= f->tcp_flags;
		ct_account(&e->tx_packets, &e->tx_bytes, f->len);
	}
	/* One FIN half-closes: the other end may go on sending, after any pause, so the
	 * connection keeps its lifetime until both ends have sent theirs (as Cilium's
	 * per-direction closing flags). Only a FIN can complete the pair: other packets
	 * skip the check. */
	if ((f->tcp_flags & FTH_TCP_FIN) && (e->tx_flags_seen & e->rx_flags_seen & FTH_TCP_FIN))
		e->flags |= FTH_CT_F_CLOSING;
	e->expires = ct_now() + ct_lifetime(f, e->flags);
	return state;
}

/* Has the connection on this entry begun to close (a FIN either way, or an RST)? A SYN
 * from its initiator then opens a new connection on the tuple (ct_and_policy). */
static __always_inline int ct_closing_started(const struct ct_entry *e)
{
	return (e->flags & FTH_CT_F_CLOSING) || ((e->tx_flags_seen | e->rx_flags_seen) & FTH_TCP_FIN);
}

/* ICMP errors: destination unreachable (port unreachable, fragmentation needed, ...),
 * time exceeded (from the other end: fragment reassembly), parameter problem. Each quotes
 * the header of the packet it answers. */
static __always_inline int icmp_is_error(__u8 type)
{
	return type == 3 || type == 11 || type == 12;
}

/* Is this ICMP error about a tracked connection (Cilium's CT_RELATED)? The error quotes
 * the IPv4 header and the first 8 bytes of the packet it answers; that packet's tuple
 * finds the connection's entry. Only an error between the connection's own two ends is
 * related, from the quoted packet's destination to its source, as Cilium relates only
 * the connection's address pair: anyone else (a third pod, a router on the way, a host
 * outside that guessed a port) would otherwise get ICMP of its making past policy. Any
 * other error is judged on its own, as a new ICMP flow. A connection translated by a
 * service (rev-NAT id on its entry) is not related either: its error would need the
 * quoted header translated back, which this datapath does not do. No accounting, no entry
 * made: the connection's own packets keep its state. The quoted header is read with
 * bpf_skb_load_bytes: a large error (fragmentation needed quotes ~548 bytes) may have it
 * outside the linear data. */
static __always_inline int ct_related(struct __sk_buff *skb, const struct fth_flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	struct iphdr in;
	struct fth_flow q = {};
	struct ct_key k;
	struct ct_entry *e;
	__u8 l4[8] __attribute__((aligned(8)));
	__u32 off;

	if ((void *)(ip + 1) > data_end)
		return 0;
	off = ETH_HLEN + ip->ihl * 4 + 8;       /* after the ICMP header */
	if (bpf_skb_load_bytes(skb, off, &in, sizeof(in)) < 0)
		return 0;
	if (in.version != 4 || in.ihl < 5 || in.saddr != f->daddr || in.daddr != f->saddr ||
	    (in.frag_off & bpf_htons(0x1fff)))
		return 0;
	if (bpf_skb_load_bytes(skb, off + in.ihl * 4, l4, sizeof(l4)) < 0)
		return 0;
	if (in.protocol != IPPROTO_TCP && in.protocol != IPPROTO_UDP &&
	    !(in.protocol == IPPROTO_ICMP && (l4[0] == 8 || l4[0] == 0)))
		return 0;
	q.saddr = in.saddr;
	q.daddr = in.daddr;
	q.proto = in.protocol;
	l4_ports(in.protocol, l4, &q);          /* keyed as parse_ipv4 keys the packet itself */
	ct_key_of(&q, &k);
	e = bpf_map_lookup_elem(&fth_ct4_v2, &k);
	return e && !e->rev_nat_id;
}

/* Is the packet a reply of a tracked connection? (No accounting.) */
static __always_inline int ct_is_reply(const struct fth_flow *f)
{
	struct ct_key k;
	int swapped = ct_key_of(f, &k);
	struct ct_entry *e = bpf_map_lookup_elem(&fth_ct4_v2, &k);

	return e && swapped != !!(e->flags & FTH_CT_F_SWAPPED);
}

static __always_inline int ct_create(const struct fth_flow *f, __u32 src_identity, __u32 dst_identity,
				     __u32 rule_ref, __u16 rev_nat_id)
{
	struct ct_key k;
	int swapped = ct_key_of(f, &k);
	struct ct_entry e = {
		.tx_packets = 1,
		.tx_bytes = f->len,
		.rule_ref = rule_ref,
		.src_identity = src_identity,
		.dst_identity = dst_identity,
		.tx_flags_seen = f->tcp_flags,
		.rev_nat_id = rev_nat_id,
		.flags = swapped ? FTH_CT_F_SWAPPED : 0,
	};
	e.expires = ct_now() + ct_lifetime(f, 0);
	if (bpf_map_update_elem(&fth_ct4_v2, &k, &e, BPF_ANY) < 0)
		return FTH_DROP_CT_CREATE_FAILED;
	return 0;
}

/* A new connection on the tuple of an old one (a client port used again while the
 * old entry waits out its close): the entry found is made afresh where it is, as
 * Cilium reopens a closing entry, instead of a new element taking its key (an LRU
 * element is popped from the free lists, the old one pushed back). */
static __always_inline void ct_reopen(struct ct_entry *e, const struct fth_flow *f, __u32 src_identity,
				      __u32 dst_identity, __u32 rule_ref, __u16 rev_nat_id)
{
	struct ct_key k;
	int swapped = ct_key_of(f, &k);

	e->expires = ct_now() + ct_lifetime(f, 0);
	e->tx_packets = 1;
	e->tx_bytes = f->len;
	e->rx_packets = 0;
	e->rx_bytes = 0;
	e->rule_ref = rule_ref;
	e->src_identity = src_identity;
	e->dst_identity = dst_identity;
	e->tx_flags_seen = f->tcp_flags;
	e->rx_flags_seen = 0;
	e->flags = swapped ? FTH_CT_F_SWAPPED : 0;
	e->rev_nat_id = rev_nat_id;
}
