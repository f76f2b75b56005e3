"""load_config: every problem as FILE:LINE:COL, secrets resolved and never echoed, the example."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path, PurePosixPath

import pytest

from ingestd.config.load import load_config
from ingestd.config.model import Config, ConfigError, SourceConfig, VerifySchedule, WatchConfig

REPO = Path(__file__).resolve().parents[2]
SECRET = "hunter2-do-not-print"
ENV = {"LEYR_SECRET": SECRET, "NYMBL_SECRET": SECRET + "-n", "NYMBL_KEY": SECRET + "-k"}

GOOD = """\
paths:
  inbox: /srv/in
  done: /srv/done
  failed: /srv/failed
  state: /var/lib/ingestd/journal.sqlite
targets:
  leyr:
    kind: leyr
    base_url: https://api.leyr.example/api
    emr: webdoc
    care_unit_id: 0123
    client_id: cid
    client_secret: ${LEYR_SECRET}
  nymbl:
    kind: nymbl
    base_url: https://api.nymbl.example
    token_url: https://auth.nymbl.example/token
    client_id: cid
    client_secret: ${NYMBL_SECRET}
    api_key: ${NYMBL_KEY}
rules:
  - name: all
    set: {title: "{stem}", type: Scan, target: leyr}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml", mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return str(path)


def problems(path: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV if env is None else env)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


def test_good_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), ENV)
    assert isinstance(config, Config)
    assert config.paths.inbox == Path("/srv/in")
    assert config.paths.state == Path("/var/lib/ingestd/journal.sqlite")
    leyr = config.targets["leyr"]
    assert (leyr.name, leyr.kind, leyr.common.concurrency, leyr.common.timeout_seconds) == (
        "leyr",
        "leyr",
        4,
        60.0,
    )
    assert leyr.options["client_secret"] == SECRET
    assert leyr.options["care_unit_id"] == "0123"  # as written, not the octal number 83
    assert "kind" not in leyr.options
    assert leyr.common.accept is None
    assert leyr.common.max_bytes is None
    assert config.targets["nymbl"].options["api_key"] == SECRET + "-k"
    assert config.watch == WatchConfig()
    assert config.patients.patient_id("x") == "x"
    assert [r.name for r in config.rules] == ["all"]
    assert config.rule_lines == {"all": 22}
    assert config.warnings == ()
    assert SECRET not in repr(config)


def test_five_mistakes_give_five_problems_at_their_lines(tmp_path: Path) -> None:
    text = GOOD.replace("https://api.leyr", "http://api.leyr")  # line 9
    text = text.replace("    emr: webdoc\n", "    emr: webdoc\n    emr: again\n")  # line 11
    secret_line = "    client_secret: ${LEYR_SECRET}\n"
    text = text.replace(secret_line, secret_line + "    concurrency: 0\n")  # line 15
    text = text.replace('title: "{stem}"', 'title: "{stme}"')  # line 25
    text = text.replace("target: leyr}", "target: leyer}")  # line 25
    path = write(tmp_path, text)
    assert problems(path) == [
        f"{path}:9:15: targets.leyr.base_url must use https:// "
        "(plain http:// is allowed only to a loopback host)",
        f"{path}:11:5: duplicate key (the same key is on line 10)",
        f"{path}:15:18: targets.leyr.concurrency must be 1 or more",
        f"{path}:25:18: unknown field {{stme}} in rule 'all'.set.title; did you mean 'stem'? "
        "(fields here: {name}, {stem}, {ext}, {folder}, {patient_id}, {date}, {received})",
        f"{path}:25:48: rule 'all'.set.target: no target named 'leyer'; did you mean 'leyr'?",
    ]


def test_five_different_mistakes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        paths:
          inbox: /srv/in
          done: /srv/done
          failed: /srv/failed
          state: /srv/journal.sqlite
        targets:
          leyr:
            kind: leyr
            base_url: https://api.leyr.example/api
            emr: webdoc
            care_unit_id: cu
            client_id: cid
            client_secret: ${MISSING_SECRET}
            concurency: 2
        watch:
          settle_seconds: soon
        rules:
          - name: lab
            match: {path: "lab/**", filename_regex: "lab_(?P<n>\\\\d+"}
            set: {title: "Lab", type: Lab, target: leyr}
          - name: rest
        """,
    )
    assert problems(path) == [
        f"{path}:13:20: ${{MISSING_SECRET}} is not set",
        f"{path}:14:5: unknown key 'concurency' in targets.leyr (kind leyr); "
        "did you mean 'concurrency'?",
        f"{path}:16:19: watch.settle_seconds must be a number, not a string",
        f"{path}:19:45: rule 'lab'.match.filename_regex is not a valid regex: "
        "missing ), unterminated subpattern",
        f"{path}:21:5: rule 'rest' needs set: (to upload), ignore: true or fail: MESSAGE",
    ]


def test_file_name_is_reported_exactly_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "paths: {}\nbogus: 1\n")
    found = problems("./c.yaml")
    assert all(p.startswith("./c.yaml:") for p in found)
    assert "./c.yaml:2:1: unknown key 'bogus' in the config" in found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "\n\nwatch: {}\n",
            [
                "3:1: the config is missing the required key 'paths'",
                "3:1: the config is missing the required key 'targets'",
                "3:1: the config is missing the required key 'rules'",
            ],
            id="missing sections are reported at the parent mapping",
        ),
        pytest.param(
            "paths:\ntargets:\nrules:\n",
            ["1:7: paths is empty", "2:9: targets is empty", "3:7: rules is empty"],
            id="empty sections",
        ),
        pytest.param(
            GOOD + "watch: {}\nwatch: {settle_seconds: 2}\n",
            ["25:1: duplicate key (the same key is on line 24)"],
            id="duplicate key",
        ),
        pytest.param(
            GOOD + "patiens: {}\n",
            ["24:1: unknown key 'patiens' in the config; did you mean 'patients'?"],
            id="unknown top-level key with did you mean",
        ),
        pytest.param(
            GOOD.replace("https://auth.nymbl", "http://auth.nymbl"),
            [
                "17:16: targets.nymbl.token_url must use https:// "
                "(plain http:// is allowed only to a loopback host)"
            ],
            id="token_url checked too",
        ),
    ],
)
def test_problems_are_reported_at_their_lines(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}:{problem}" for problem in expected]


def test_no_rules_is_only_a_warning(tmp_path: Path) -> None:
    text = GOOD.split("rules:")[0] + "rules: []\n"
    config = load_config(write(tmp_path, text), ENV)
    assert config.rules == ()
    assert [w.message for w in config.warnings] == [
        "rules is empty: every file will fail with no_rule"
    ]


def test_syntax_error_empty_file_and_wrong_shape(tmp_path: Path) -> None:
    broken = write(tmp_path, "paths:\n  inbox: [a\n", "broken.yaml")
    assert problems(broken)[0].startswith(f"{broken}:3:1: YAML syntax error:")
    empty = write(tmp_path, "# nothing yet\n", "empty.yaml")
    assert problems(empty) == [f"{empty}:1:1: the config file is empty"]
    listing = write(tmp_path, "- a\n", "list.yaml")
    assert problems(listing) == [
        f"{listing}:1:1: the config must be a mapping of sections, not a list"
    ]
    missing = str(tmp_path / "missing.yaml")
    assert problems(missing) == [f"{missing}:1:1: cannot read the file: No such file or directory"]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/api", "http://127.5.6.7/", "http://[::1]:9000", "http://localhost/x"],
)
def test_http_allowed_to_loopback(tmp_path: Path, url: str) -> None:
    config = load_config(write(tmp_path, GOOD.replace("https://api.leyr.example/api", url)), ENV)
    assert config.targets["leyr"].options["base_url"] == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://ehr.example/api", "must use https://"),
        ("http://10.0.0.5/api", "must use https://"),
        ("http://localhost.evil.example/", "must use https://"),
        ("ftp://ehr.example/", "must be an https:// URL"),
        ("api.leyr.example", "must be an https:// URL"),
        ("https://[::1", "is not a valid URL"),
    ],
)
def test_non_https_refused(tmp_path: Path, url: str, message: str) -> None:
    found = problems(write(tmp_path, GOOD.replace("https://api.leyr.example/api", url)))
    assert len(found) == 1
    assert message in found[0]
    assert url not in found[0]


def test_secrets_never_appear_in_errors_or_warnings(tmp_path: Path) -> None:
    inline = GOOD.replace("client_secret: ${LEYR_SECRET}", f"client_secret: {SECRET}")
    inline = inline.replace("care_unit_id: 0123", "care_unit_id: [x]")
    inline = inline.replace("api_key: ${NYMBL_KEY}", "api_key: {a: 1}")
    exposed = write(tmp_path, inline, mode=0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(exposed, ENV)
    text = str(caught.value)
    assert SECRET not in text
    assert "warning: client_secret is written inline" in text
    assert "targets.nymbl.api_key must be a string, not a mapping" in text
    # Warnings alone do not raise; they are kept on the config.
    valid = write(tmp_path, GOOD.replace("${LEYR_SECRET}", SECRET), "ok.yaml", mode=0o644)
    config = load_config(valid, ENV)
    assert len(config.warnings) == 1
    assert config.warnings[0].warning
    assert str(config.warnings[0]).startswith(f"{valid}:13:20: warning: client_secret is written")
    assert all(SECRET not in str(w) for w in config.warnings)
    private = write(tmp_path, GOOD.replace("${LEYR_SECRET}", SECRET), "private.yaml", mode=0o600)
    assert load_config(private, ENV).warnings == ()


def test_unresolved_secret_names_the_reference_only(tmp_path: Path) -> None:
    env = {"LEYR_SECRET": SECRET, "NYMBL_SECRET": SECRET}
    path = write(tmp_path, GOOD)
    assert problems(path, env) == [f"{path}:20:14: ${{NYMBL_KEY}} is not set"]


def test_file_and_credential_references(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "leyr-secret").write_text(SECRET + "\n")
    (tmp_path / "key").write_text("k\n\n")
    text = GOOD.replace("${LEYR_SECRET}", "${credential:leyr-secret}")
    text = text.replace("${NYMBL_KEY}", "${file:" + str(tmp_path / "key") + "}")
    path = write(tmp_path, text)
    config = load_config(path, {**ENV, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert config.targets["leyr"].options["client_secret"] == SECRET
    assert config.targets["nymbl"].options["api_key"] == "k\n"
    assert problems(path, ENV) == [
        f"{path}:13:20: ${{credential:leyr-secret}}: $CREDENTIALS_DIRECTORY is not set "
        "(systemd sets it for LoadCredential=)"
    ]


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert load_config(write(tmp_path, GOOD)).targets["leyr"].options["client_secret"] == SECRET


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    text = GOOD.replace("/srv/", "spool/").replace("/var/lib/ingestd/", "../state/")
    (tmp_path / "etc").mkdir()
    config = load_config(write(tmp_path / "etc", text), ENV)
    assert config.paths.inbox == tmp_path / "etc" / "spool" / "in"
    assert config.paths.state == tmp_path / "state" / "journal.sqlite"


def test_folders_must_not_nest(tmp_path: Path) -> None:
    text = GOOD.replace("done: /srv/done", "done: /srv/in/done")
    path = write(tmp_path, text.replace("failed: /srv/failed", "failed: /srv/in"))
    assert problems(path) == [
        f"{path}:3:9: paths.done is inside paths.inbox",
        f"{path}:3:9: paths.done is inside paths.failed",
        f"{path}:4:11: paths.failed is the same as paths.inbox",
    ]


def test_inbox_inside_done_and_state_inside_inbox(tmp_path: Path) -> None:
    text = GOOD.replace("inbox: /srv/in", "inbox: /srv/done/in")
    text = text.replace("/var/lib/ingestd/journal.sqlite", "/srv/done/in/journal.sqlite")
    path = write(tmp_path, text)
    assert problems(path) == [
        f"{path}:2:10: paths.inbox is inside paths.done",
        f"{path}:5:10: paths.state must not be inside paths.inbox (unless in a hidden folder)",
    ]
    hidden = GOOD.replace("/var/lib/ingestd/journal.sqlite", "/srv/in/.ingestd/journal.sqlite")
    assert load_config(write(tmp_path, hidden, "h.yaml"), ENV).paths.state.name == "journal.sqlite"


def test_target_options_and_common_keys(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    client_id: cid\n    client_secret: ${LEYR_SECRET}\n",
        "    client_secret: ${LEYR_SECRET}\n"
        "    concurrency: 0\n"
        "    max_bytes: 30 MiB\n"
        "    timeout_seconds: 5\n"
        "    accept: [application/pdf, pdf]\n",
    )
    text = text.replace("kind: nymbl", "kind: nimble")
    path = write(tmp_path, text)
    assert problems(path) == [
        f"{path}:7:3: targets.leyr is missing the required key 'client_id'",
        f"{path}:13:18: targets.leyr.concurrency must be 1 or more",
        f"{path}:14:16: targets.leyr.max_bytes may only lower the limit: between 1 and 20971520",
        f"{path}:15:22: targets.leyr.timeout_seconds must be more than 8",
        f"{path}:16:13: targets.leyr.accept: 'pdf' is not a MIME type like application/pdf",
        f"{path}:18:11: targets.nymbl.kind must be one of fhir, leyr, nymbl",
    ]


def test_target_common_keys_are_applied(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    client_secret: ${LEYR_SECRET}\n",
        "    client_secret: ${LEYR_SECRET}\n"
        "    concurrency: 2\n"
        "    max_bytes: 10 MB\n"
        "    timeout_seconds: 30\n"
        "    accept: [Application/PDF, image/png]\n"
        "    created_by_id: resource-1\n",
    )
    leyr = load_config(write(tmp_path, text), ENV).targets["leyr"]
    assert leyr.common.concurrency == 2
    assert leyr.common.max_bytes == 10_000_000
    assert leyr.common.timeout_seconds == 30.0
    assert leyr.common.accept == frozenset({"application/pdf", "image/png"})
    assert leyr.options["created_by_id"] == "resource-1"


def test_nymbl_option_values_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    api_key:", "    token_auth: digest\n    api_key:"))
    found = problems(path)
    assert len(found) == 1
    assert found[0].startswith(f"{path}:20:17: targets.nymbl.token_auth:")


def test_watch_section_and_sources(tmp_path: Path) -> None:
    text = GOOD + textwrap.dedent(
        """\
        watch:
          settle_seconds: 2
          scan_interval_seconds: 30
          empty_fail_seconds: 600
          unknown_type_grace_seconds: 45
          poll: false
          sources:
            - {folder: "*/duplex", settle_seconds: 30}
            - {folder: "*/fax", poll: true}
            - {folder: "**", settle_seconds: 5}
        """
    )
    watch = load_config(write(tmp_path, text), ENV).watch
    assert (watch.settle_seconds, watch.scan_interval_seconds) == (2.0, 30.0)
    assert (watch.empty_fail_seconds, watch.unknown_type_grace_seconds) == (600.0, 45.0)
    assert watch.sources[0] == SourceConfig("*/duplex", 30.0, None)
    assert watch.settle_for(PurePosixPath("anna/duplex/scan.pdf")) == 30.0
    assert watch.settle_for(PurePosixPath("anna/duplex/2024/scan.pdf")) == 30.0
    assert watch.settle_for(PurePosixPath("anna/duplex")) == 30.0
    assert watch.settle_for(PurePosixPath("anna/fax/1.tif")) == 2.0  # first match has no settle
    assert watch.poll_for(PurePosixPath("anna/fax/1.tif")) is True
    assert watch.poll_for(PurePosixPath("anna/duplex/1.pdf")) is False
    assert watch.settle_for(PurePosixPath("anna/other.pdf")) == 5.0


def test_watch_problems(tmp_path: Path) -> None:
    text = GOOD + textwrap.dedent(
        """\
        watch:
          scan_interval_seconds: 0
          settle_seconds: -1
          poll: sometimes
          sources:
            - {settle_seconds: 3, pol: true}
            - "*/fax"
        """
    )
    path = write(tmp_path, text)
    assert problems(path) == [
        f"{path}:25:26: watch.scan_interval_seconds must be greater than 0",
        f"{path}:26:19: watch.settle_seconds must be 0 or more",
        f"{path}:27:9: watch.poll must be true or false, not a string",
        f"{path}:29:7: watch.sources[1] is missing the required key 'folder'",
        f"{path}:29:27: unknown key 'pol' in watch.sources[1]; did you mean 'poll'?",
        f"{path}:30:7: watch.sources[2] must be a mapping, not a string",
    ]


def test_default_watch_settle_and_poll() -> None:
    watch = WatchConfig()
    assert watch.settle_for(PurePosixPath("a/b.pdf")) == 1.0
    assert watch.poll_for(PurePosixPath("a/b.pdf")) is False


def test_example_config_loads_without_problems(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("leyr-client-secret", "nymbl-client-secret", "nymbl-api-key"):
        (creds / name).write_text(f"value-of-{name}\n")
    config = load_config(
        str(REPO / "config" / "ingestd.yaml"),
        {"CREDENTIALS_DIRECTORY": str(creds), "NYMBL_API_KEY": "unused"},
    )
    assert config.warnings == ()
    assert config.paths.inbox == Path("/var/spool/ingestd/inbox")
    assert config.paths.state == Path("/var/lib/ingestd/journal.sqlite")
    assert set(config.targets) == {"leyr", "nymbl"}
    assert config.targets["leyr"].options["client_secret"] == "value-of-leyr-client-secret"
    assert config.patients.patient_id("191212121212") == "se_personal_number:191212121212"
    assert config.patients.patient_id("nymbl-10482") == "10482"
    assert config.watch.settle_for(PurePosixPath("191212121212/duplex/scan.pdf")) == 30.0
    assert config.rules[-1].match.filename is None  # the catch-all


def test_state_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    """`run` would fail with "unable to open database file": check says so first."""
    folder = tmp_path / "state"
    folder.mkdir()
    path = write(tmp_path, GOOD.replace("/var/lib/ingestd/journal.sqlite", str(folder)))
    assert problems(path) == [
        f"{path}:5:10: paths.state is a folder; it names the journal's file, e.g. "
        f"{folder / 'journal.sqlite'}"
    ]


@pytest.mark.parametrize(
    ("every", "sample", "seconds", "fraction"),
    [("24h", "1%", 86400.0, 0.01), (3600, 0.5, 3600.0, 0.5), ("90 m", "100%", 5400.0, 1.0)],
)
def test_verify_section(
    tmp_path: Path, every: object, sample: object, seconds: float, fraction: float
) -> None:
    text = GOOD + f"verify: {{every: {every}, sample: {sample}}}\n"
    config = load_config(write(tmp_path, text), ENV)
    assert config.verify == VerifySchedule(seconds, fraction)
    assert load_config(write(tmp_path, GOOD), ENV).verify is None


def test_verify_problems(tmp_path: Path) -> None:
    text = GOOD + textwrap.dedent(
        """\
        verify:
          every: 10s
          sample: 150%
        ---
        """
    ).replace("---\n", "")
    path = write(tmp_path, text)
    assert problems(path) == [
        f"{path}:25:10: verify.every must be 60 s or more, e.g. 24h",
        f"{path}:26:11: verify.sample must be above 0 and at most 100%",
    ]
    path = write(tmp_path, GOOD + "verify: {every: often, sampel: 1%}\n")
    found = problems(path)
    assert any("verify.every must be 60 s or more" in p for p in found)
    assert any("unknown key 'sampel' in verify; did you mean 'sample'?" in p for p in found)
    assert any("'sample'" in p and "missing" in p for p in found)
