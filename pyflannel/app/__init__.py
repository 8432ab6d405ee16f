"""The application: command line, options, logging, and the daemon that wires the layers."""
