"""The studies' small-file helpers: atomic replacement, tolerant reading."""

import os

import pytest

from experiments.jsonio import read_json, write_json, write_text


def test_write_text_replaces_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "sub" / "report.md")
    write_text(path, "first\n")
    write_text(path, "second\n")
    assert open(path).read() == "second\n"
    assert os.listdir(tmp_path / "sub") == ["report.md"]


def test_failed_json_write_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "summary.json")
    write_json(path, {"rows": 1})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json(path, circular)
    assert read_json(path) == {"rows": 1}


def test_read_json_treats_missing_and_truncated_files_as_absent(tmp_path):
    path = tmp_path / "marker.json"
    assert read_json(str(path)) is None
    path.write_text('{"finished": tr')
    assert read_json(str(path)) is None
