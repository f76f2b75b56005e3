"""The sandbox's look inside a PDF it stored: does it open, and how many pages does it hold.

pypdf is a test-only dependency (the sandbox ships in the package, which does not need it), so
it is imported only when asked; without it the answer is None ("not checked").
"""

from __future__ import annotations

import io
import logging


def pdf_pages(content: bytes) -> int | None:
    """The number of pages; 0 when the PDF does not open; None when pypdf is not installed."""
    try:
        import pypdf
    except ImportError:
        return None
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        return len(pypdf.PdfReader(io.BytesIO(content), strict=True).pages)
    # pypdf raises many types for a broken file; any of them means "does not open".
    except Exception:  # noqa: BLE001
        return 0
