"""The CLI's commands: one `run_<name>` each, imported only by `ingestd.cli`."""
