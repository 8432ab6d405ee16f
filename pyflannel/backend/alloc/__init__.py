"""The alloc backend: subnets allocated and kept, no data plane."""
