"""`baldr-ops sae eval` and `baldr-ops sae train` through baldr_ops.cli.main: output, and bad input
answered with exit status 2 and one error line (no traceback)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from baldr_ops.cli import main
from baldr_ops.sae.formats import load_sae, save_saelens
from baldr_ops.sae.metrics import EvalReport
from baldr_ops.sae.train import TrainOptions, TrainReport
from tests.sae.test_metrics import identity_sae
from tests.sae.test_model import random_sae

pytestmark = pytest.mark.research


@pytest.fixture
def demo(smollm2, monkeypatch):
    """The CLIs get the session's SmolLM2 instead of loading it again."""
    import baldr_ops.cli.sae.eval as eval_cli
    import baldr_ops.cli.sae.train as train_cli

    for module in (eval_cli, train_cli):
        monkeypatch.setattr(module, "load_model_from_args", lambda _args: smollm2)
    return smollm2


def one_error_line(capsys, code: int, pattern: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("baldr-ops: error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), err
    assert "Traceback" not in err and "internal error" not in err


@pytest.fixture
def identity_dir(tmp_path, smollm2):
    return save_saelens(identity_sae(smollm2.d_model, layer=3), tmp_path / "identity")


def test_eval_prints_a_table_and_json(demo, identity_dir, capsys):
    args = ["sae", "eval", "--sae", str(identity_dir), "--max-tokens", "64", "--seq-len", "32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "all tokens" in out and "excl. first+massive" in out and "layer 3" in out
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines() if line[:24].strip()}
    assert rows["FVU"] == ["0.0000", "0.0000"] and rows["CE recovered"] == ["1.0000", "1.0000"]
    assert rows["tokens"] == ["64", "62"]  # two windows: two first positions left out

    assert main(args + ["--json"]) == 0
    report = EvalReport.model_validate_json(capsys.readouterr().out)
    assert report.kind == "sae-eval" and report.layer == 3 and report.schema_version
    assert report.all.delta_ce == 0.0 and report.excluding_outliers.tokens == 62


def test_eval_bad_input(demo, identity_dir, tmp_path, capsys):
    base = ["sae", "eval", "--sae", str(identity_dir), "--max-tokens", "32"]
    one_error_line(capsys, main(base + ["--text", str(tmp_path / "missing.txt")]), "does not exist")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    one_error_line(capsys, main(base + ["--text", str(tmp_path / "blank.txt")]), "no text")
    one_error_line(capsys, main(base + ["--layer", "30"]), "out of range")
    one_error_line(capsys, main(base + ["--max-tokens", "0"]), "too small")
    one_error_line(capsys, main(["sae", "eval", "--sae", str(tmp_path / "nope")]), "does not exist")
    small = save_saelens(random_sae("topk"), tmp_path / "small")  # d_in 16
    one_error_line(capsys, main(["sae", "eval", "--sae", str(small)]), "d_in 16 .* d_model is 576")


def test_eval_sae_errors_come_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import baldr_ops.cli.sae.eval as eval_cli

    def no_model(_args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(eval_cli, "load_model_from_args", no_model)
    one_error_line(capsys, main(["sae", "eval", "--sae", str(tmp_path / "nope")]), "does not exist")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0")
    one_error_line(capsys, main(["sae", "eval", "--sae", str(tmp_path / "odd")]), "unknown SAE format")
    layered = tmp_path / "layered"
    for layer in (2, 4):
        save_saelens(random_sae("topk"), layered / f"layer_{layer}")
    one_error_line(capsys, main(["sae", "eval", "--sae", str(layered)]), "pick one with --layer")
    one_error_line(capsys, main(["sae", "eval", "--sae", str(layered), "--layer", "3"]), "layer 3")


def test_train_writes_a_loadable_sae_with_progress(demo, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The river runs past the old mill and under the stone bridge. " * 60)
    out = tmp_path / "sae"
    common = ["sae", "train", "--layer", "2", "--text", str(text), "--out", str(out), "--d-sae", "128",
              "--k", "4", "--batch-size", "64", "--buffer-tokens", "512", "--seq-len", "32"]
    args = common + ["--steps", "20", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    report = TrainReport.model_validate_json(captured.out)
    assert report.steps == 20 and report.d_sae == 128 and report.out == str(out)
    progress = [line for line in captured.err.splitlines() if "step" in line and "FVU" in line]
    assert progress and "20/20" in progress[-1]
    sae = load_sae(out)
    assert sae.config.k == 4 and sae.config.hook_name == "blocks.2.hook_resid_post"
    assert json.loads((out / "cfg.json").read_text())["metadata"]["model_name"] == demo.name

    one_error_line(capsys, main(args), "not empty")  # the same --out again
    assert main(common + ["--force", "--tokens", "640"]) == 0  # --tokens: 640 / 64 = 10 steps
    assert "wrote" in capsys.readouterr().out
    assert TrainReport.model_validate_json((out / "baldr_training.json").read_text()).steps == 10


def test_train_bad_input(demo, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Some words to train on. " * 50)
    base = ["sae", "train", "--text", str(text), "--out", str(tmp_path / "o"), "--steps", "2"]
    one_error_line(capsys, main(base + ["--layer", "30"]), "out of range")
    one_error_line(capsys, main(base + ["--layer", "1", "--k", "0"]), "--k must be positive")
    one_error_line(capsys, main(base + ["--layer", "1", "--d-sae", "8", "--k", "9"]), "k must be between")
    one_error_line(capsys, main(["sae", "train", "--layer", "1", "--text", str(tmp_path / "none.txt"),
                                 "--out", str(tmp_path / "o")]), "does not exist")
    (tmp_path / "empty.txt").write_text("")
    one_error_line(capsys, main(["sae", "train", "--layer", "1", "--text", str(tmp_path / "empty.txt"),
                                 "--out", str(tmp_path / "o")]), "no text")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    one_error_line(capsys, main(["sae", "train", "--layer", "1", "--text", str(text),
                                 "--out", str(tmp_path / "full")]), "not empty")
    one_error_line(capsys, main(base + ["--layer", "1", "--batch-size", "4096"]), "fewer than one batch|buffer")


def test_help_explains_every_option(capsys):
    from baldr_ops.cli import build_parser
    from baldr_ops.cli.sae.train import DEFAULTS

    sae_parser = build_parser()._subparsers._group_actions[0].choices["sae"]
    for command in ("eval", "train"):
        sub = sae_parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            assert action.help and len(action.help) > 10, action.option_strings
        with pytest.raises(SystemExit) as exit_:
            main(["sae", command, "--help"])
        assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out
    # The defaults docs/sae.md states, written out: the library trains with them and --help shows
    # the same (the CLI repeats them so --help need not import torch).
    documented = {"expansion": 8, "k": 32, "steps": 1000, "batch_size": 1024, "seq_len": 128, "forward_batch": 8,
                  "buffer_tokens": 32768, "auxk_alpha": 1 / 32, "dead_after_tokens": 50_000, "seed": 0}
    fields = TrainOptions.model_fields
    assert {name: fields[name].default for name in documented} == documented
    assert DEFAULTS == documented


def test_eval_loads_the_demo_model_itself(identity_dir, smollm2, capsys):
    """One run without the shared model: --model demo goes through the real loader."""
    torch.manual_seed(0)
    assert main(["sae", "eval", "--model", "demo", "--sae", str(identity_dir), "--max-tokens", "32",
                 "--seq-len", "32", "--json"]) == 0
    assert EvalReport.model_validate_json(capsys.readouterr().out).model == smollm2.name
