"""The daemon: its loop and shutdown, intake (hints, scans, polling, claims) and workers."""
