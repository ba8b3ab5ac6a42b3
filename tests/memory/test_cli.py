"""`baldr-ops memory` end to end on the demo model: keygen, add, list, approve, verify, ab, kill
switch, audit; bad input (wrong key, corrupt file, empty store, untrusted origin) is one clear line."""

from __future__ import annotations

import json

import pytest

from baldr_ops.cli import main

pytestmark = pytest.mark.research


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["memory", "--help"])
    out = capsys.readouterr().out
    for name in ("keygen", "add", "list", "approve", "revoke", "verify", "disable", "enable", "audit", "ab", "eval"):
        assert f"    {name}" in out


def test_parse_layer_settings():
    from baldr_ops.cli.memory import parse_layer_settings
    from baldr_ops.errors import UserError

    s = parse_layer_settings("20:strength=3,threshold=0.2,query=running", {"clip": 0.3})
    assert (s.layer, s.strength, s.threshold, s.clip, s.query) == (20, 3.0, 0.2, 0.3, "running")
    for bad in ("x", "13:nope=1", "13:clip=9"):
        with pytest.raises(UserError, match="bad --layer"):
            parse_layer_settings(bad, {})


@pytest.mark.slow
def test_memory_commands_end_to_end(tmp_path, capsys, demo_model, monkeypatch):
    monkeypatch.delenv("BALDR_MEMORY_KEY", raising=False)
    monkeypatch.delenv("BALDR_MEMORY_DISABLE", raising=False)
    key, store = str(tmp_path / "memory.key"), str(tmp_path / "store")
    common = ["--store", store, "--key-file", key]
    code, out, _ = _run(capsys, "memory", "keygen", "--key-file", key, "--json")
    assert code == 0 and json.loads(out)["key_id"]
    # Two tokens pooled at layer 13: an outlier there (near the top, at the default 27, it is not).
    code, _, err = _run(capsys, "memory", "add", *common, "--layer", "13", "Some text.")
    assert code == 2 and "failed the write-time screens" in err
    memories = tmp_path / "memories.txt"
    memories.write_text("The central bank raised interest rates to slow inflation, and bond yields rose.\n\n"
                        "A diversified portfolio spreads money across stocks, bonds and cash.\n")
    code, out, err = _run(capsys, "memory", "add", *common, "--file", str(memories), "--label", "finance", "--json")
    assert code == 0, err
    added = json.loads(out)
    assert added["layers"] == [27] and "90% depth" in added["layer_source"]
    assert [r["status"] for r in added["records"]] == ["quarantined", "quarantined"]
    code, _, err = _run(capsys, "memory", "add", *common, "--origin", "model", "The model wrote this sentence.")
    assert code == 2 and "never written to memory" in err
    code, out, _ = _run(capsys, "memory", "ab", *common, "When interest rates go up, investors")
    assert code == 2
    code, out, _ = _run(capsys, "memory", "approve", *common, "--all-quarantined", "--json")
    assert code == 0 and {r["status"] for r in json.loads(out)["records"]} == {"approved"}
    code, out, _ = _run(capsys, "memory", "list", *common)
    assert code == 0 and out.count("approved") == 2
    code, out, _ = _run(capsys, "memory", "ab", *common, "When interest rates go up, investors usually",
                        "--max-new-tokens", "8", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["layers"][0]["candidates"][0]["relevance"] > 0.25 and report["kl_next_token"] > 0
    assert report["generation_id"] and report["disabled"] is None
    code, out, _ = _run(capsys, "memory", "disable", "--store", store)
    assert code == 0 and "ON" in out
    code, out, _ = _run(capsys, "memory", "ab", *common, "When interest rates go up, investors usually",
                        "--max-new-tokens", "8", "--json")
    off = json.loads(out)
    assert off["disabled"] and off["identical"] and off["kl_next_token"] == 0
    _run(capsys, "memory", "enable", "--store", store)
    code, out, _ = _run(capsys, "memory", "audit", *common, "--json")
    entries = json.loads(out)["entries"]
    assert len(entries) == 4 and entries[-1]["disabled"] and entries[0]["layers"][0]["records"]
    code, out, _ = _run(capsys, "memory", "verify", *common, "--model", "demo", "--rederive")
    assert code == 0 and "OK" in out
    # Corrupt the second record: verify says so (exit 1); list still works and shows the first,
    # quarantined (its approval comes after the break).
    log = tmp_path / "store" / "layer-027.jsonl"
    lines = log.read_text().split("\n")
    lines[2] = lines[2][:-20] + "x" * 20
    log.write_text("\n".join(lines))
    code, out, _ = _run(capsys, "memory", "verify", *common)
    assert code == 1 and "layer-027.jsonl:3" in out and "LOG DAMAGED" in out
    code, out, _ = _run(capsys, "memory", "list", *common)
    assert code == 0 and "1 record(s); 4 bad line(s)" in out and "quarantined" in out
    # A wrong key is one clear line.
    other = str(tmp_path / "other.key")
    _run(capsys, "memory", "keygen", "--key-file", other)
    code, _, err = _run(capsys, "memory", "list", "--store", store, "--key-file", other)
    assert code == 2 and "signed with key id" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_failed_add_leaves_no_file_behind(tmp_path, capsys, demo_model, monkeypatch):
    """Bad layer, bad origin, bad text: nothing is created for a new store, nothing changes in an
    existing one."""
    import hashlib

    monkeypatch.delenv("BALDR_MEMORY_KEY", raising=False)
    monkeypatch.delenv("BALDR_SAE_PROFILE", raising=False)
    key, store = str(tmp_path / "memory.key"), tmp_path / "store"
    common = ["--store", str(store), "--key-file", key]
    _run(capsys, "memory", "keygen", "--key-file", key)
    bad = [(["--layer", "99", "A sentence about the weather today."], "out of range"),
           (["--origin", "model", "A sentence about the weather today."], "never written"),
           (["--layer", "13", "Some text."], "failed the write-time screens")]
    for argv, message in bad:
        code, _, err = _run(capsys, "memory", "add", *common, *argv)
        assert code == 2 and message in err, err
        assert not store.exists()
    code, _, err = _run(capsys, "memory", "add", *common, "The central bank raised interest rates to slow inflation.")
    assert code == 0, err

    def snapshot():
        return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode) for p in store.iterdir()}

    before = snapshot()
    for argv, message in bad + [(["--layer", "20", "Some text."], "failed the write-time screens")]:
        code, _, err = _run(capsys, "memory", "add", *common, *argv)
        assert code == 2 and message in err, err
        assert snapshot() == before


@pytest.mark.parametrize("data, via_stdin, message", [
    (b"caf\xe9 au lait\n", False, "is not UTF-8 text (byte 3"),
    (b"caf\xe9 au lait\n", True, "standard input is not UTF-8 text (byte 3"),
    (b"\x7fELF\x02\x01\x01\x00\x00", True, "standard input is not text (it holds NUL bytes)"),
])
def test_add_refuses_text_that_is_not_utf8_before_loading_anything(capsys, tmp_path, monkeypatch, data, via_stdin,
                                                                   message):
    import io
    import sys

    import baldr_ops.cli.memory as memory_cli

    def no_model(_args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(memory_cli, "load_model_from_args", no_model)
    source = tmp_path / "texts.txt"
    source.write_bytes(data)
    if via_stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = _run(capsys, "memory", "add", "--store", str(tmp_path / "store"),
                        "--file", "-" if via_stdin else str(source))
    lines = err.strip().splitlines()
    assert code == 2 and message in lines[0] and len(lines) <= 2, err
    assert not (tmp_path / "store").exists()
