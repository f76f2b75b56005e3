"""`ingestd explain`: what would happen to these inbox files, and why — with no side effects.

It reads each file the way the pipeline does (one descriptor, type from content) and runs the
same decisions (`ingestd.delivery.decide`), but claims, uploads and moves nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd import content
from ingestd.commands.common import EXIT_OK, UsageError, load
from ingestd.config.model import Config
from ingestd.delivery.decide import (
    Reading,
    Rejected,
    check_before_upload,
    decision_for,
    judge,
    reading,
    rule_failure,
)
from ingestd.delivery.topdf import ConversionFailed, convert
from ingestd.names import is_ignored_path
from ingestd.rules.conversion import CONVERTIBLE, PDF, converts, pdf_name, unconvertible
from ingestd.targets import KINDS, make_target
from ingestd.targets.base import Target, Upload


class NotInInbox(Exception):
    """A path given to explain that is not inside the inbox."""


@dataclass
class Explanation:
    path: str  # inbox-relative
    verdict: str  # upload | ignore | fail | wait | skip
    reason: str = ""
    patient_id: str | None = None
    format: str | None = None
    size: int | None = None
    rules: list[dict[str, Any]] = field(default_factory=list)
    decision: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    conversion: dict[str, Any] | None = None  # {from, to, why, pages, size}: what is sent
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value not in (None, [], "")}


def offline_targets(config: Config) -> dict[str, Target]:
    """Targets for local checks only: a secret that only systemd can provide is left blank
    (explain never sends a request)."""
    targets: dict[str, Target] = {}
    for name, settings in config.targets.items():
        blanks = dict.fromkeys(KINDS[settings.kind].required, "")
        options = {**blanks, **settings.options}
        targets[name] = make_target(dataclasses.replace(settings, options=options))
    return targets


def inbox_paths(config: Config, given: list[str]) -> Iterator[PurePosixPath]:
    """Inbox-relative paths for the command-line arguments; folders are expanded."""
    inbox = config.paths.inbox.resolve()
    for raw in given:
        path = Path(raw)
        absolute = Path(os.path.abspath(path if path.is_absolute() else Path.cwd() / path))
        try:
            rel = PurePosixPath(absolute.relative_to(inbox))
        except ValueError:
            try:  # an inbox-relative path, as logs and receipts write them
                rel = PurePosixPath(raw)
                (inbox / rel).lstat()
            except OSError:
                raise NotInInbox(f"{raw}: not inside the inbox ({inbox})") from None
        full = inbox / rel
        if full.is_dir() and not full.is_symlink():
            for dirpath, dirs, files in os.walk(full):
                dirs.sort()
                for name in sorted(files):
                    yield PurePosixPath(os.path.relpath(os.path.join(dirpath, name), inbox))
        else:
            yield rel


def explain(config: Config, targets: Mapping[str, Target], rel: PurePosixPath) -> Explanation:
    path = config.paths.inbox / rel
    result = Explanation(path=str(rel), verdict="fail")
    if is_ignored_path(rel):
        result.verdict, result.reason = "skip", "hidden or temporary name: ingestd never takes it"
        return result
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        result.verdict, result.reason = "skip", "no such file"
        return result
    if not stat.S_ISREG(mode):
        return _failed(result, Rejected("not_a_regular_file", f"is {content.file_type(mode)}"))
    try:
        with reading(path) as read:
            return _explain_open(config, targets, rel, read, result)
    except FileNotFoundError:
        result.verdict, result.reason = "skip", "no such file"
        return result
    except content.UnsafeFile as exc:
        return _failed(result, Rejected(exc.kind, exc.message))


def _explain_open(
    config: Config,
    targets: Mapping[str, Target],
    rel: PurePosixPath,
    read: Reading,
    result: Explanation,
) -> Explanation:
    fmt, st = read.format, read.stat
    result.format, result.size = fmt or "not recognised", st.st_size
    if st.st_size == 0:
        result.verdict = "wait"
        result.reason = (
            f"empty: waits for content, fails as `empty` after "
            f"{config.watch.empty_fail_seconds:g} s"
        )
        return result
    try:
        patient_id, verdict = judge(config, rel, read, received=datetime.now(UTC))
        result.patient_id = patient_id
        lines = config.rule_lines
        result.rules = [
            {"rule": name, "line": lines.get(name), "matched": False, "why": why}
            for name, why in verdict.misses
        ]
        decision = decision_for(config, verdict, fmt)
        result.rules.append({"rule": decision.rule, "line": decision.rule_line, "matched": True})
        result.decision = decision.to_dict()
        if decision.action == "ignore":
            result.verdict, result.reason = "ignore", f"rule '{decision.rule}' leaves it alone"
            return result
        if decision.action == "fail":
            raise rule_failure(decision)
        target = targets[decision.target]
        result.target = {
            "name": target.name,
            "kind": target.kind,
            "max_bytes": target.max_bytes,
            "accept": sorted(target.accept),
        }
        upload = Upload(
            patient_id=patient_id, file_name=rel.name, mime=fmt, size=st.st_size,
            title=decision.title, doc_type=decision.doc_type, fields=dict(decision.fields),
        )  # fmt: skip
        if converts(decision, fmt):
            upload = _converted(result, read, upload, decision.convert_why)
        check_before_upload(target, upload)
    except Rejected as exc:
        return _failed(result, exc)
    result.verdict = "upload"
    result.reason = f"to {target.name} ({target.kind})"
    return result


def _converted(result: Explanation, read: Reading, upload: Upload, why: str) -> Upload:
    """The PDF the file would be sent as: converted in memory, only measured (Rejected as
    conversion_failed when it cannot be made)."""
    result.conversion = {"from": read.format, "to": PDF, "why": why}
    if read.format not in CONVERTIBLE:
        raise Rejected("conversion_failed", f"{unconvertible(read.format)}: change the rule")
    try:
        made = convert(read.fd, read.stat.st_size, None)
    except ConversionFailed as exc:
        raise Rejected("conversion_failed", exc.message) from None
    result.conversion.update(pages=made.pages, size=made.size)
    return dataclasses.replace(
        upload, file_name=pdf_name(upload.file_name), mime=PDF, size=made.size
    )


def _failed(result: Explanation, exc: Rejected) -> Explanation:
    result.verdict = "fail"
    result.error = dict(exc.error)
    result.reason = f"{exc.kind}: {exc.message}"
    return result


def render(item: Explanation) -> str:
    """Human text for one explanation."""
    lines = [item.path]
    if item.patient_id is not None:
        lines.append(f"  patient id: {item.patient_id}")
    if item.format is not None:
        lines.append(f"  format:     {item.format} (from content), {item.size:,} bytes")
    for rule in item.rules:
        where = f" (line {rule['line']})" if rule.get("line") else ""
        if rule["matched"]:
            lines.append(f"  rule:       '{rule['rule']}'{where} matches")
        else:
            lines.append(f"  not rule:   '{rule['rule']}'{where}: {rule['why']}")
    decision = item.decision or {}
    if decision.get("action") == "upload":
        lines.append(f"  title:      {decision.get('title')}")
        lines.append(f"  type:       {decision.get('doc_type')}")
        for key, value in (decision.get("fields") or {}).items():
            lines.append(f"  {key + ':':11} {value}")
    conversion = item.conversion or {}
    if conversion:
        made = (
            f": {conversion['pages']} page(s), {conversion['size']:,} bytes"
            if "size" in conversion
            else ""
        )
        lines.append(
            f"  convert:    {conversion['from']} → {conversion['to']} ({conversion['why']}){made}"
        )
    if item.target is not None:
        limit = item.target["max_bytes"]
        size = conversion.get("size", item.size or 0)
        fits = "fits" if size <= limit else "TOO LARGE"
        lines.append(
            f"  target:     {item.target['name']} ({item.target['kind']}), "
            f"{size:,} of at most {limit:,} bytes: {fits}"
        )
    lines.append(f"  verdict:    {item.verdict.upper()}: {item.reason}")
    return "\n".join(lines)


def run_explain(args: argparse.Namespace) -> int:
    config = load(args, in_service=False)
    targets = offline_targets(config)
    try:
        items = [explain(config, targets, rel) for rel in inbox_paths(config, args.paths)]
    except NotInInbox as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps([item.to_dict() for item in items], indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(render(item) for item in items))
    return EXIT_OK
