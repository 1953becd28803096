// BPF
