"""Cost of conversion to PDF: peak memory (the peak of Python allocations while converting,
tracemalloc: image data is Python bytes) and time per page, ingestd's converter against the
`img2pdf` command on the same files: a 20-page G4 fax and a 15 MB JPEG. Each run is a fresh
process.

    .venv/bin/python bench/convert.py
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHILD = """
import os, sys, time
from ingestd.delivery.topdf import convert
import PIL.Image, img2pdf  # imported before measuring
src, dest = sys.argv[1], sys.argv[2]
import tracemalloc
def status(field):  # VmHWM, not ru_maxrss: that one carries the parent's peak over exec
    with open("/proc/self/status") as lines:
        return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field + ":"))
rss_before = status("VmRSS")
tracemalloc.start()
fd = os.open(src, os.O_RDONLY)
started = time.perf_counter()
with open(dest, "wb") as out:
    made = convert(fd, os.fstat(fd).st_size, out)
seconds = time.perf_counter() - started
grown = tracemalloc.get_traced_memory()[1]  # peak of Python allocations while converting
rss_grown = status("VmHWM") - rss_before
print(made.pages, seconds, grown, rss_grown)
"""


def fax(pages: int) -> bytes:
    from tests.images import fax_tiff

    return fax_tiff(pages=pages)


def big_jpeg() -> bytes:
    from PIL import Image

    rng = random.Random(1)
    side = 4600
    noise = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=85)
    data = out.getvalue()
    print(f"jpeg: {len(data) / 1e6:.1f} MB ({side}x{side})", file=sys.stderr)
    return data


COMMAND = """
import atexit, sys
import img2pdf
def status(field):
    with open("/proc/self/status") as lines:
        return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field + ":"))
started = status("VmRSS")
atexit.register(lambda: print(status("VmHWM") - started, status("VmHWM"), file=sys.stderr))
argv = ["img2pdf", "--engine=internal", "--nodate", "-o", sys.argv[2], sys.argv[1]]
sys.exit(img2pdf.main(argv))
"""


def command_cost(src: Path, dest: Path) -> tuple[float, int, int]:
    """Time (the whole process, start-up included), peak RSS growth over the process once
    img2pdf is imported, and peak RSS of the `img2pdf` command's own code (its `main()`, in a
    process of its own; /proc's VmHWM, since ru_maxrss carries the parent's peak over exec)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, str(src), str(dest)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    grown, peak = (int(word) for word in done.stderr.split()[-2:])
    return seconds, grown, peak


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        for name, data in (("20-page G4 fax", fax(20)), ("15 MB JPEG", big_jpeg())):
            src = root / "src"
            src.write_bytes(data)
            found = subprocess.run(
                [sys.executable, "-c", CHILD, str(src), str(root / "ours.pdf")],
                check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH="."),
            ).stdout.split()  # fmt: skip
            pages, seconds, grown = int(found[0]), float(found[1]), int(found[2])
            rss_grown = int(found[3])
            cmd_seconds, cmd_grown, cmd_peak = command_cost(src, root / "cmd.pdf")
            same = (root / "ours.pdf").read_bytes() == (root / "cmd.pdf").read_bytes()
            print(
                f"{name}: source {len(data) / 1e6:.2f} MB, {pages} page(s); ingestd "
                f"{seconds * 1000 / pages:.1f} ms/page, peak +{grown / 1e6:.1f} MB (tracemalloc) "
                f"({grown / len(data):.2f}x the source), peak RSS +{rss_grown / 1e6:.1f} MB "
                f"({rss_grown / len(data):.2f}x); img2pdf command "
                f"{cmd_seconds * 1000 / pages:.1f} ms/page (whole process, start-up included), "
                f"peak RSS +{cmd_grown / 1e6:.1f} MB ({cmd_grown / len(data):.2f}x; "
                f"{cmd_peak / 1e6:.1f} MB in all); same bytes: {same}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
