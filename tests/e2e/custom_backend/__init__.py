"""A backend that lives outside pyflannel's tree, to prove that a backend is its own folder
plus one registry entry (here the ``PYFLANNEL_BACKENDS`` environment variable)."""
