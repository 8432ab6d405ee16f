"""pyflannel doctor: a preflight check of a node before (or while) running pyflannel."""
