"""The namespace test bed (etcd, nodes, pods, captures) for tests, bench/ and the demo.

Not part of the installed package: nodes run the daemon, not this."""
