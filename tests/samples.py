"""Re-export of the package's sample documents for tests."""

from ingestd.sandbox.samples import SAMPLES, docx, gif, jpeg, pdf, png, tiff

__all__ = ["SAMPLES", "docx", "gif", "jpeg", "pdf", "png", "tiff"]
