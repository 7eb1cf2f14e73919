"""read_json / read_jsonl: the values stored, and one-line errors naming the file."""

from __future__ import annotations

import pytest

from medkd.errors import MedkdError
from medkd.run import read_json, read_jsonl


def test_read_json_returns_the_value(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2.5, null]}')
    assert read_json(path) == {"x": [1, 2.5, None]}


def test_read_json_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(MedkdError, match=r"nope\.json: gone for good$"):
        read_json(tmp_path / "nope.json", "gone for good")
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": ')
    with pytest.raises(MedkdError, match=r"bad\.json: not readable JSON \(JSONDecodeError\)"):
        read_json(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MedkdError, match=r"bin\.json: not readable JSON"):
        read_json(binary)


def test_read_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    path = tmp_path / "m.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(MedkdError, match=r"m\.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)
