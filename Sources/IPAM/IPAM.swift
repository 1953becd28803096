// IPAM
