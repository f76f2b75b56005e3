"""The Verifier: outcomes from what a target reads back, the journal's verified table, the pause
after repeated trouble, concurrency per target, and the ERROR line and metric of a mismatch."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from ingestd.delivery.retrying import RetryPolicy
from ingestd.delivery.verifying import Checked, Claim, Verifier, claim_of, receipts_in
from ingestd.journal import Journal
from ingestd.observe.logs import Masker
from ingestd.observe.metrics import Metrics
from ingestd.targets.base import AuthError, Fetched, PermanentError, TransientError

SHA = "a" * 64


class FakeTarget:
    """Answers `fetch` from a script: a Fetched, None, or an exception to raise, per document."""

    def __init__(self, answers: dict[str, list[object]]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def fetch(self, document_id: str, patient_id: str) -> Fetched | None:
        with self._lock:
            self.asked.append(document_id)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.gate.wait(5)
            script = self.answers[document_id]
            answer = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(answer, Exception):
                raise answer
            assert answer is None or isinstance(answer, Fetched)
            return answer
        finally:
            with self._lock:
                self.in_flight -= 1


def claim(doc: str, target: str = "t", sha: str = SHA, size: int | None = 10) -> Claim:
    return Claim(PurePosixPath(f"p/{doc}.pdf.receipt.json"), target, doc, "p_1", sha, size)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite")
    yield j
    j.close()


def verifier(journal: Journal, target: FakeTarget, **kwargs: object) -> Verifier:
    return Verifier(
        targets={"t": target},  # type: ignore[dict-item]
        concurrency={"t": 2},
        journal=journal,
        masker=Masker(b"k" * 32),
        **kwargs,  # type: ignore[arg-type]
    )


def outcomes(results: list[Checked]) -> dict[str, str]:
    return {str(r.document_id): r.outcome for r in results}


def test_outcomes_from_what_the_ehr_gives_back(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    target = FakeTarget(
        {
            "good": [Fetched(10, SHA)],
            "gone": [None],
            "other": [Fetched(10, "b" * 64)],
            "shorter": [Fetched(9, SHA)],
            "moved": [Fetched(10, SHA, other_patient=True)],
            "refused": [PermanentError("t verify: HTTP 403", 403)],
        }
    )
    metrics = Metrics()
    caplog.set_level(logging.INFO, "ingestd")
    results = verifier(journal, target, metrics=metrics).run(
        [claim(d) for d in ("good", "gone", "other", "shorter", "moved", "refused")]
        + [claim("elsewhere", target="nosuch")]
    )
    assert outcomes(results) == {
        "good": "ok",
        "gone": "missing",
        "other": "different",
        "shorter": "different",
        "moved": "other_patient",
        "refused": "unverified",
        "elsewhere": "unverified",
    }
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert all("receipt=f:" in e and "p_1" not in e and ".pdf" not in e for e in errors)
    value = metrics.registry.get_sample_value
    assert value("ingestd_verify_total", {"target": "t", "outcome": "missing"}) == 1
    assert value("ingestd_verify_total", {"target": "t", "outcome": "ok"}) == 1
    assert journal.verified_at("t", "good", SHA) is not None
    assert journal.verified_at("t", "gone", SHA) is None


def test_a_second_run_skips_what_was_proven_unless_again(journal: Journal) -> None:
    target = FakeTarget({"good": [Fetched(10, SHA)]})
    assert outcomes(verifier(journal, target).run([claim("good")])) == {"good": "ok"}
    assert outcomes(verifier(journal, target).run([claim("good")])) == {"good": "skipped"}
    assert target.asked == ["good"]
    # Other content under the same id is another claim: it is checked.
    assert outcomes(verifier(journal, target).run([claim("good", sha="c" * 64)])) == {
        "good": "different"
    }
    target.answers["good"] = [None]
    assert outcomes(verifier(journal, target, again=True).run([claim("good")])) == {
        "good": "missing"
    }
    assert journal.verified_at("t", "good", SHA) is None  # so the next run checks it again


def test_transient_trouble_is_retried_then_the_target_is_given_up_for_the_run(
    journal: Journal,
) -> None:
    busy = TransientError("t verify: HTTP 503", 503, retry_after=0.0)
    target = FakeTarget({"a": [busy, Fetched(10, SHA)], "b": [busy], "c": [Fetched(10, SHA)]})
    results = verifier(journal, target).run([claim("a")])
    assert outcomes(results) == {"a": "ok"}
    assert target.asked == ["a", "a"]

    target.asked.clear()
    v = verifier(journal, target, policy=RetryPolicy(max_sends=3))
    v.concurrency = {"t": 1}
    results = v.run([claim("b"), claim("c")])
    assert outcomes(results) == {"b": "unverified", "c": "unverified"}
    assert target.asked == ["b", "b", "b"]  # c is not asked: the target is given up on
    assert results[0].detail.startswith("the EHR is not answering")
    assert results[1].detail.startswith("not asked: the EHR is not answering")


def test_refused_credentials_stop_the_target_at_once(journal: Journal) -> None:
    target = FakeTarget({d: [AuthError("t verify: HTTP 401")] for d in "abcd"})
    v = verifier(journal, target)
    v.concurrency = {"t": 1}
    results = v.run([claim(d) for d in "abcd"])
    assert {r.outcome for r in results} == {"unverified"}
    assert target.asked == ["a"]
    assert "credentials" in results[0].detail


def test_reads_per_target_stay_within_its_concurrency(journal: Journal) -> None:
    target = FakeTarget({str(n): [Fetched(10, SHA)] for n in range(8)})
    target.gate.clear()
    v = verifier(journal, target)
    runner = threading.Thread(target=lambda: v.run([claim(str(n)) for n in range(8)]))
    runner.start()
    threading.Timer(0.3, target.gate.set).start()
    runner.join(10)
    assert len(target.asked) == 8
    assert target.most_in_flight == 2


def test_claims_from_receipts_compare_what_was_sent(tmp_path: Path) -> None:
    root = tmp_path / "done"
    (root / "p_1").mkdir(parents=True)
    base = {
        "status": "done", "document_id": "doc_1", "target": "leyr", "patient_id": "p_1",
        "source": "p_1/fax.tiff", "file": "fax.tiff", "size": 10,
        "finished_at": "2026-12-01T10:00:00Z",
    }  # fmt: skip
    converted = root / "p_1" / "fax.tiff.receipt.json"
    # A converted file: the EHR holds the PDF, whose hash is `sha256`; `source_sha256` is the TIFF.
    converted.write_text(json.dumps({**base, "sha256": "pdf" * 21, "source_sha256": "tif" * 21}))
    found = claim_of(root, converted)
    assert isinstance(found, Claim)
    assert (found.sha256, found.document_id, found.source) == ("pdf" * 21, "doc_1", "p_1/fax.tiff")

    nameless = root / "p_1" / "odd.pdf.receipt.json"
    nameless.write_text(json.dumps({**base, "sha256": SHA, "document_id": None}))
    broken = root / "p_1" / "cut.pdf.receipt.json"
    broken.write_text('{"status": "do')
    for path in (nameless, broken):
        checked = claim_of(root, path)
        assert isinstance(checked, Checked)
        assert checked.outcome == "unverified"
    assert receipts_in(root) == sorted([converted, nameless, broken])
    assert receipts_in(tmp_path / "nowhere") == []
