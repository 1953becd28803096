/* Drop reasons: the one list shared by the datapath and the agent.
 *
 * Numbers are Cilium's (bpf/lib/common.h, negated) which Hubble reports as
 * flow.DropReason; where Cilium has no number the reason is Fathom's own and sits
 * above Cilium's range. Swift mirrors this enum as `DropReason` (Sources/Datapath)
 * and Tests/DatapathTests parses this file to keep the two equal: one entry per
 * line, `FTH_DROP_<NAME> = <number>,`.
 */
#pragma once

enum fth_drop_reason {
	FTH_DROP_INVALID_SOURCE_IP = 132,
	FTH_DROP_POLICY_DENIED = 133,
	FTH_DROP_INVALID_PACKET = 134,
	FTH_DROP_CT_INVALID_HEADER = 135,
	FTH_DROP_CT_UNKNOWN_L4_PROTOCOL = 137,
	FTH_DROP_UNSUPPORTED_L3_PROTOCOL = 139,
	FTH_DROP_ERROR_WRITING_TO_PACKET = 141,
	FTH_DROP_UNKNOWN_L4_PROTOCOL = 142,
	FTH_DROP_UNKNOWN_TARGET = 150,
	FTH_DROP_CT_CREATE_FAILED = 155,
	FTH_DROP_FRAGMENTATION_NOT_SUPPORTED = 157,
	FTH_DROP_SERVICE_BACKEND_NOT_FOUND = 158,
	FTH_DROP_NO_MAPPING_FOR_NAT_MASQUERADE = 167,
	FTH_DROP_UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE = 168,
	FTH_DROP_POLICY_DENY = 181,
	FTH_DROP_NO_EGRESS_GATEWAY = 194,
	FTH_DROP_TTL_EXCEEDED = 196,
	FTH_DROP_ENDPOINT_LOCKDOWN = 250,
};
