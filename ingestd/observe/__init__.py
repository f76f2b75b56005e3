"""Observing the daemon: logs, metrics, systemd notify, status.json."""
