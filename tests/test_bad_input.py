"""Every parties.toml and data-file mistake is one line in the CLI's words, exit code 2 (no
traceback), and a long text loads from a CSV as it does from JSON Lines."""

from __future__ import annotations

import json

import pytest

from secptune.cli import main
from secptune.data import files, load_file
from test_network import loopback_addresses, write_parties


def _one_line_exit_2(argv, capsys, expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("secptune: error")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err


@pytest.fixture
def parties_text(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    return write_parties(tmp_path, keys, loopback_addresses()).read_text()


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("connect_timeout = 60", 'connect_timeout = "soon"'),
     "[transport] connect_timeout must be a number, got 'soon'"),
    (lambda t: t.replace("heartbeat = 1.0", "heartbeat = -1"), "[transport] heartbeat must be positive"),
    (lambda t: t.replace("frac_bits = 16", "frac_bits = 16.5"), "[protocol] frac_bits must be a whole number"),
    (lambda t: t.replace("encrypt = true", 'encrypt = "yes"'), "[transport] encrypt is true or false"),
    (lambda t: t.replace('address = "tcp://', 'address = "', 1), 'address must be "tcp://HOST:PORT"'),
    (lambda t: t.replace('address = "tcp://127.0.0.1', 'address = "tcp://127.0.0.1:x', 1),
     'address must be "tcp://HOST:PORT"'),
    (lambda t: t.replace("[parties.owner]", "[elsewhere]"), "no [parties.owner] table"),
    (lambda t: t.replace("public_key = ", "public_key = 7 #", 1), "public_key is a file name in quotes"),
    (lambda t: "[parties]\nserver0 = 3\n" + t.split("[parties.server0]")[0], "[parties.server0] must be a table"),
    (lambda t: t.replace("[protocol]", "protocol = 1\n[x]", 1), "[protocol] must be a table"),
], ids=["timeout-text", "heartbeat-negative", "frac-bits-float", "encrypt-text", "no-scheme", "bad-port",
        "no-owner", "key-not-text", "party-not-table", "section-not-table"])
def test_a_bad_parties_file_is_one_line_exit_2_for_tune_and_serve(tmp_path, parties_text, capsys, edit, expected):
    path = tmp_path / "bad.toml"
    path.write_text(edit(parties_text))
    _one_line_exit_2(["tune", "--parties", str(path), "--out", str(tmp_path / "run")], capsys, expected)
    _one_line_exit_2(["serve", "--role", "server0", "--config", str(path)], capsys, expected)
    assert not (tmp_path / "run").exists()


def test_a_parties_file_that_is_not_utf8_is_one_line_exit_2(tmp_path, parties_text, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(parties_text.encode() + "# café\n".encode("latin-1"))
    _one_line_exit_2(["tune", "--parties", str(path)], capsys, "not UTF-8 text")


def test_a_long_text_loads_from_csv_as_from_jsonl(tmp_path):
    long = "word " * 200_000                                       # 1 MB, past csv's default field limit
    rows = [(long, "pos"), ("short and bad", "neg"), ("fine indeed", "pos"), ("awful", "neg")]
    (tmp_path / "texts.csv").write_text("text,label\n" + "".join(f'"{t}",{l}\n' for t, l in rows))
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows))
    from_csv, from_jsonl = load_file(tmp_path / "texts.csv"), load_file(tmp_path / "texts.jsonl")
    assert from_csv.texts == from_jsonl.texts and from_csv.label_ids == from_jsonl.label_ids
    assert max(len(t) for t in from_csv.texts) > 900_000


@pytest.mark.parametrize("name, content, expected", [
    ("data.csv", "text,label\n" + "x" * 200 + ",pos\nbye,neg\n", "not valid CSV after line 1 (field larger than"),
    ("data.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "line 1 nests too deeply"),
    ("data.csv", "sentence,score_given\nhello,1\nbye,2\n", "name the label column one of those"),
], ids=["field-over-the-limit", "nested-jsonl", "no-label-column"])
def test_a_bad_data_file_is_one_line_exit_2_in_the_clis_words(tmp_path, tiny_bert, capsys, monkeypatch, name,
                                                              content, expected):
    monkeypatch.setattr(files, "MAX_FIELD", 100)         # the limit, scaled down to a small file
    data = tmp_path / name
    data.write_text(content)
    _one_line_exit_2(["tune", "--mode", "plaintext", "--attention", "softmax", "--model", str(tiny_bert),
                      "--data", str(data), "--out", str(tmp_path / "run")], capsys, expected)
    assert "label_column" not in capsys.readouterr().err
