"""Conversion to PDF in the config and in `ingestd explain`: what `check` refuses (with
file:line:col), and the conversion explain shows, with its reason, for a real fax TIFF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ingestd.config.load import ConfigError, load_config
from tests import images
from tests.config.test_load import ENV, GOOD, write


def _problems(path: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=ENV)
    return [str(p) for p in caught.value.problems]


def test_convert_to_pdf_and_rule_convert_load(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    client_secret: ${LEYR_SECRET}\n",
        "    client_secret: ${LEYR_SECRET}\n    convert_to_pdf: [image/tiff, IMAGE/JPEG]\n",
    ).replace(
        '    set: {title: "{stem}", type: Scan, target: leyr}',
        "    match: {format: [image/png]}\n"
        '    set: {title: "{stem}", type: Scan, target: leyr, convert: pdf}',
    )
    config = load_config(write(tmp_path, text), env=ENV)
    assert config.targets["leyr"].common.convert_to_pdf == {"image/tiff", "image/jpeg"}
    assert config.targets["nymbl"].common.convert_to_pdf == frozenset()
    assert config.rules[0].convert == "pdf"
    assert config.warnings == ()


def test_check_refuses_conversions_it_cannot_make_at_their_places(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    client_secret: ${LEYR_SECRET}\n",
        "    client_secret: ${LEYR_SECRET}\n"
        "    convert_to_pdf:\n      - image/tiff\n      - application/dicom\n      - text/plain\n",
    ).replace(
        '    set: {title: "{stem}", type: Scan, target: leyr}',
        "    match: {format: [image/tiff, application/dicom]}\n"
        '    set: {title: "{stem}", type: Scan, target: leyr, convert: docx}\n'
        "  - name: dicom\n"
        "    match: {format: [application/dicom]}\n"
        '    set: {title: "{stem}", type: Scan, target: leyr, convert: pdf}',
    )
    path = write(tmp_path, text)
    found = _problems(path)
    assert (
        f"{path}:16:9: targets.leyr.convert_to_pdf: application/dicom cannot be converted"
        in (found[0][: len(path) + 80])
    )
    assert found[1].startswith(f"{path}:17:9: targets.leyr.convert_to_pdf: text/plain cannot")
    assert found[2].startswith(f"{path}:28:63: rule 'all'.set.convert: the only conversion")
    assert found[3].startswith(f"{path}:31:63: rule 'dicom'.set.convert: application/dicom")
    assert len(found) == 4


def test_a_target_that_takes_no_pdf_cannot_convert_to_it(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    client_secret: ${LEYR_SECRET}\n",
        "    client_secret: ${LEYR_SECRET}\n    accept: [image/tiff]\n"
        "    convert_to_pdf: [image/tiff]\n",
    )
    [problem] = _problems(write(tmp_path, text))
    assert "targets.leyr.convert_to_pdf: the target does not accept application/pdf" in problem


def test_explain_shows_the_conversion_and_why(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    (inbox / "abc_1").mkdir(parents=True)
    (inbox / "abc_1" / "fax.tif").write_bytes(images.fax_tiff(pages=2))
    text = GOOD.replace("/srv/in", str(inbox)).replace(
        "    client_secret: ${LEYR_SECRET}\n",
        "    client_secret: ${LEYR_SECRET}\n    convert_to_pdf: [image/tiff]\n",
    )
    path = write(tmp_path, text)
    env = {**ENV, "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "ingestd", "explain", "-c", path, str(inbox / "abc_1")]
    shown = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    assert "convert:    image/tiff → application/pdf (target 'leyr' lists image/tiff in " in shown
    assert "2 page(s)" in shown
    as_json = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, check=True
    ).stdout
    [item] = json.loads(as_json)
    assert item["verdict"] == "upload"
    assert item["conversion"]["pages"] == 2
    assert item["conversion"]["to"] == "application/pdf"
    assert item["decision"]["convert"] == "pdf"
