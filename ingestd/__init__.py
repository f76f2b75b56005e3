"""ingestd: a watched-folder ingestion daemon that uploads finished files to an EHR."""

__version__ = "0.1.0"
USER_AGENT = f"ingestd/{__version__}"
