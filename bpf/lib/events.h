/* Events and counters: what the datapath tells the agent.
 *
 * Trace events for the first packet of each direction of a connection and for
 * TCP flags new to a direction among fth_trace_flags (Cilium's medium monitor
 * aggregation), a drop event for every drop. Events go to one ring buffer without
 * waking the reader (BPF_RB_NO_WAKEUP), except for a record that crosses into another
 * 4 KiB of a ring more than half full; the agent drains it on a timer (<= 50 ms, sooner
 * under load) or when woken. Per-CPU counters by (reason, direction) count every
 * packet: reason 0 = forwarded.
 */
#pragma once
#include "common.h"
#include "ipcache.h"

/* TCP flags whose first sighting in a direction of a connection is reported (Cilium's
 * --monitor-aggregation-flags; its agent's default SYN, FIN, RST: opening and
 * closing, not every ACK or PSH). Set by the loader. */
const volatile __u32 fth_trace_flags = FTH_TCP_SYN | FTH_TCP_FIN | FTH_TCP_RST;

#define FTH_EVENT_DROP  1
#define FTH_EVENT_TRACE 2

/* Where the event was seen. */
#define FTH_OBS_FROM_CONTAINER 1
#define FTH_OBS_TO_CONTAINER   2
#define FTH_OBS_FROM_NETDEV    3
#define FTH_OBS_TO_NETDEV      4

/* Trace reasons (for FTH_EVENT_TRACE). */
#define FTH_TRACE_NEW         1
#define FTH_TRACE_ESTABLISHED 2
#define FTH_TRACE_REPLY       3
#define FTH_TRACE_RELATED     4   /* an ICMP error about a tracked connection */

struct fth_event {
	__u8  type;             /* FTH_EVENT_* */
	__u8  reason;           /* drop reason, or FTH_TRACE_* */
	__u8  obs_point;        /* FTH_OBS_* */
	__u8  direction;        /* FTH_DIR_* of the check that decided (drops), or of the program */
	__u32 ifindex;          /* interface the program runs on */
	__u64 ktime_ns;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 saddr;            /* network order */
	__u32 daddr;
	__u16 sport;            /* host order */
	__u16 dport;
	__u8  proto;
	__u8  tcp_flags;        /* TCP: the header's flags; ICMP: the message type */
	__u16 verdict;          /* TC_ACT_* returned */
	__u32 endpoint_id;      /* local endpoint concerned, 0 = none */
	__u32 rule_ref;
	__u32 pkt_len;
	__u32 xlated_saddr;     /* source after NAT (network order), 0 = not translated */
	__u16 frontend_id;      /* service frontend (rev-NAT id) of a translated connection, 0 = none */
	__u16 pad;
};

#define FTH_EVENTS_RING_BYTES (256 * 1024)

/* What one event takes in the ring: the 8-byte record header, rounded up to 8 bytes. */
#define FTH_EVENT_RECORD_BYTES ((sizeof(struct fth_event) + 8 + 7) & ~7UL)
_Static_assert(sizeof(struct fth_event) == 64, "fth_event: the agent decodes 64-byte records");

/* Written by the programs; drained by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FTH_EVENTS_RING_BYTES);
} fth_events_v1 SEC(".maps");

/* Events that found the ring full: one per-CPU counter, read by the agent and
 * reported as LostEvent records (nothing is lost silently). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} fth_lost_v1 SEC(".maps");

/* Counters by (reason, direction): index reason << 2 | direction, reason 0 =
 * forwarded. An array, not a hash: every packet counts, and an array slot is a
 * pointer computation where a hash lookup hashes the key and walks a bucket. */
#define FTH_METRICS_SLOTS (256 * 4)

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* Written by the programs; read (summed over CPUs, zero slots skipped) by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, FTH_METRICS_SLOTS);
} fth_metrics_v2 SEC(".maps");

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 k = ((__u32)reason << 2) | (dir & 3);
	struct metrics_value *v = bpf_map_lookup_elem(&fth_metrics_v2, &k);

	if (!v)
		return;
	v->packets += 1;
	v->bytes += len;
}

/* What a program knows about a packet when it reports it. */
struct fth_ctx {
	struct fth_flow flow;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 endpoint_id;
	__u32 rule_ref;
	__u32 xlated_saddr;     /* set by NAT: the source the packet leaves with */
	__u8  obs_point;
	__u8  direction;
	__u8  is_reply;         /* conntrack: a reply of a tracked connection */
	__u8  is_related;       /* conntrack: an ICMP error about one (ct_related) */
	__u8  lazy;             /* FTH_LAZY_*: identities still to look up in the ipcache */
	__u16 rev_nat_id;       /* lib/lb.h: frontend of a translated connection */
};

/* An identity a program has not looked up yet: the ipcache is a longest-prefix
 * trie, and a packet of a tracked connection needs no identity unless it is
 * reported. ctx_identities() looks them up before a policy check or an event. */
#define FTH_LAZY_SRC 0x01
#define FTH_LAZY_DST 0x02

/* The packet's source identity from the ipcache. The node's own addresses are `host`
 * there, which no ingress policy applies to; but a packet from the network that claims
 * one of them was not sent by this node's stack (a forged source, or one looped back):
 * from-netdev takes it as world, as Cilium's resolve_srcid_ipv4 ignores HOST_ID from the
 * ipcache for traffic from the network. */
static __always_inline __u32 ctx_source_identity(const struct fth_ctx *c)
{
	__u32 id = ipcache_identity(c->flow.saddr);

	return id == FTH_ID_HOST && c->obs_point == FTH_OBS_FROM_NETDEV ? FTH_ID_WORLD : id;
}

static __always_inline void ctx_identities(struct fth_ctx *c)
{
	if (c->lazy & FTH_LAZY_SRC)
		c->src_identity = ctx_source_identity(c);
	if (c->lazy & FTH_LAZY_DST)
		c->dst_identity = ipcache_identity(c->flow.daddr);
	c->lazy = 0;
}

static __always_inline void emit_event(struct __sk_buff *skb, const struct fth_ctx *c,
				       __u8 type, __u8 reason, __u16 verdict)
{
	struct fth_event *e = bpf_ringbuf_reserve(&fth_events_v1, sizeof(*e), 0);

	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&fth_lost_v1, &zero);

		if (lost)
			*lost += 1;
		return;
	}
	e->type = type;
	e->reason = reason;
	e->obs_point = c->obs_point;
	e->direction = c->direction;
	e->ifindex = skb->ifindex;
	e->ktime_ns = bpf_ktime_get_ns();
	e->src_identity = c->src_identity;
	e->dst_identity = c->dst_identity;
	e->saddr = c->flow.saddr;
	e->daddr = c->flow.daddr;
	e->sport = c->flow.sport;
	e->dport = c->flow.dport;
	e->proto = c->flow.proto;
	e->tcp_flags = c->flow.proto == IPPROTO_ICMP ? c->flow.icmp_type : c->flow.tcp_flags;
	e->verdict = verdict;
	e->endpoint_id = c->endpoint_id;
	e->rule_ref = c->rule_ref;
	e->pkt_len = skb->len;
	e->xlated_saddr = c->xlated_saddr;
	e->frontend_id = c->rev_nat_id;
	e->pad = 0;
	/* The reader is not woken per event: it drains on its timer. But a burst can fill
	 * the ring before the timer fires (a connection-per-request load writes ~5 MB/s of
	 * events per node: 256 KiB last ~50 ms): once the ring is more than half full, the
	 * reader is woken, by the record that crosses into another 4 KiB of it (a wake-up is
	 * an interrupt: one per record costs more than the record; two CPUs crossing at the
	 * same time may both miss, and the next 4 KiB wakes it). */
	__u64 avail = bpf_ringbuf_query(&fth_events_v1, BPF_RB_AVAIL_DATA);
	__u64 before = avail - FTH_EVENT_RECORD_BYTES;
	int wake = avail > FTH_EVENTS_RING_BYTES / 2 && (avail >> 12) != (before >> 12);

	bpf_ringbuf_submit(e, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Drops the packet: counter, drop event, TC_ACT_SHOT. */
static __always_inline int drop(struct __sk_buff *skb, struct fth_ctx *c, __u8 reason, __u8 dir)
{
	c->direction = dir;
	metrics_count(reason, dir, skb->len);
	ctx_identities(c);
	emit_event(skb, c, FTH_EVENT_DROP, reason, TC_ACT_SHOT);
	return TC_ACT_SHOT;
}

/* Forwards the packet: counter, and a trace event when the caller asks for one. */
static __always_inline int forward(struct __sk_buff *skb, struct fth_ctx *c, __u8 trace, int verdict)
{
	metrics_count(0, c->direction, skb->len);
	if (trace) {
		ctx_identities(c);
		emit_event(skb, c, FTH_EVENT_TRACE, trace, (__u16)verdict);
	}
	return verdict;
}
