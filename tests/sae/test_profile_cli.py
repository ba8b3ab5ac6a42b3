"""`baldr-ops sae profile` end to end through baldr_ops.cli.main on SmolLM2 (small layer subsets)."""

from __future__ import annotations

import json
import struct

import pytest

from baldr_ops.cli import main
from baldr_ops.sae.layer_profile import LayerProfileDocument

pytestmark = pytest.mark.research


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND"
    return width, height


def _one_line_error(capsys, argv, *, rc=2) -> str:
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = [line for line in err.splitlines() if line.startswith("baldr-ops: error:")]
    assert len(first) == 1, err
    return first[0]


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["sae", "profile", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--layers", "--text", "--bootstrap", "--seed", "--no-sipit", "--sipit-prompts",
                   "--sipit-tokens", "--sipit-budget", "--sipit-policy", "--json", "--plot", "--max-tokens"):
        assert option in out
    assert "integration depth" in out and "2510.15511" in out


def test_bad_input_exits_2_with_one_line_before_loading_anything(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "has no text" in _one_line_error(capsys, ["sae", "profile", "--text", str(empty)])
    assert "does not exist" in _one_line_error(capsys, ["sae", "profile", "--plot", str(tmp_path / "no" / "p.png")])
    assert "is a directory" in _one_line_error(capsys, ["sae", "profile", "--plot", str(tmp_path)])
    assert "--bootstrap" in _one_line_error(capsys, ["sae", "profile", "--bootstrap", "0"])
    assert "--sipit-budget" in _one_line_error(capsys, ["sae", "profile", "--sipit-budget", "0"])


def test_layers_out_of_range_exit_2(capsys, demo_model):
    line = _one_line_error(capsys, ["sae", "profile", "--model", str(demo_model), "--layers", "3,30", "--no-sipit"])
    assert "layer 30 is out of range" in line and "0..29" in line


def test_table_summary_and_plot(capsys, demo_model, tmp_path):
    plot = tmp_path / "profile.png"
    rc = main(["sae", "profile", "--model", str(demo_model), "--layers", "1,12,29", "--no-sipit",
               "--bootstrap", "50", "--plot", str(plot)])
    assert rc == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "layer 1: 1/3 done" in err and "layer 29: 3/3 done" in err and "plot written" in err
    lines = out.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["layer", "depth"])
    for column in ("KL nats", "top-1", "NN acc", "log rank", "max cos"):
        assert column in header
    assert "SipIt" not in header  # --no-sipit
    rows = {line.split()[0]: line for line in lines if line.strip() and line.split()[0] in ("1", "12", "29")}
    assert set(rows) == {"1", "12", "29"}
    assert "100%" in rows["29"] and "0.00 [0.00,0.00]" in rows["29"]  # the lens is the output at the last layer
    assert "logit-lens KL(final || lens) peaks at layer 12" in out
    assert "integration depth:" in out
    # docs/sae.md: 800 pixels wide, 190 per metric panel; five panels without SipIt.
    assert _png_size(plot) == (800, 5 * 190)


@pytest.mark.slow
def test_json_with_sipit_and_text_file(capsys, demo_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is Paris.\n\nWater boils at one hundred degrees.\n")
    plot = tmp_path / "p.png"
    rc = main(["sae", "profile", "--model", str(demo_model), "--layers", "2,28", "--text", str(prompts),
               "--sipit-prompts", "1", "--sipit-tokens", "3", "--bootstrap", "20", "--seed", "3", "--json",
               "--plot", str(plot)])
    assert rc == 0
    captured = capsys.readouterr()
    doc = LayerProfileDocument.model_validate(json.loads(captured.out))
    assert doc.kind == "sae.layer_profile" and doc.schema_version
    assert doc.settings.prompts == 2 and doc.settings.prompt_source == str(prompts) and doc.settings.seed == 3
    assert [r.layer for r in doc.layers] == [2, 28]
    for row in doc.layers:
        assert row.sipit_positions == 3 and row.sipit_censored_positions == 0
        assert 0 < row.sipit_explored.value < 0.05
    assert {z.metric for z in doc.zones} >= {"lens_kl", "embed_rank", "sipit_explored"}
    assert doc.integration_depth.layer is None  # two layers: no interior to speak of
    assert _png_size(plot) == (800, int(round(6 * 1.9 * 100)))  # six panels with SipIt
