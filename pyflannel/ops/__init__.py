"""Operating a node: health endpoint, metrics, status, doctor, systemd, instance locks."""
