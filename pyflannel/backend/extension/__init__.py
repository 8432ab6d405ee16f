"""The extension backend: the operator's own data plane through shell commands."""
