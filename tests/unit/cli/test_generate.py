"""`smartspec generate` and `smartspec models path`: output shape, and clear exit-2 errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smartspec.cli.main import main
from smartspec.telemetry.records import read_jsonl
from tests.conftest import hf_greedy


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_per_prompt_and_greedy_equals_target_only(
    capsys: pytest.CaptureFixture[str], tiny_dirs: tuple[Path, Path], tiny_llama: Any
) -> None:
    target, draft = map(str, tiny_dirs)
    prompts = ["def f(x):", "import numpy as np\n"]
    outs = {}
    for policy in ("off", "fixed:3"):
        code, out, _ = run_cli(capsys, "generate", "--target", target, "--draft", draft, "--prompt", prompts[0],
                               "--prompt", prompts[1], "--max-tokens", "12", "--policy", policy, "--dtype",
                               "float32", "--ignore-eos", "--json")
        assert code == 0
        outs[policy] = [json.loads(line) for line in out.splitlines()]
    for rec in outs["fixed:3"]:
        assert set(rec) >= {"text", "token_ids", "stats"}
        assert set(rec["stats"]) == {"steps", "num_draft_tokens", "num_accepted_tokens", "acceptance_rate",
                                     "tokens_per_second", "latency_s", "ttft_s", "ks"}
        assert rec["stats"]["ks"] and all(k <= 3 for k in rec["stats"]["ks"])
        assert rec["stats"]["num_draft_tokens"] > 0 and len(rec["token_ids"]) == 12
    assert outs["off"][0]["stats"]["acceptance_rate"] is None
    for i, p in enumerate(prompts):
        ref = hf_greedy(tiny_llama.target, tiny_llama.tokenizer(p).input_ids, 12)
        assert outs["off"][i]["token_ids"] == outs["fixed:3"][i]["token_ids"] == ref


def test_goodput_policy_with_poisson_arrivals(
    capsys: pytest.CaptureFixture[str], tiny_dirs: tuple[Path, Path], tiny_llama: Any, tmp_path: Path
) -> None:
    target, draft = map(str, tiny_dirs)
    steps = tmp_path / "steps.jsonl"
    code, out, err = run_cli(capsys, "generate", "--target", target, "--draft", draft, "--prompt", "def f(x):",
                             "--prompt", "import os", "--max-tokens", "10", "--policy", "goodput", "--rate", "200",
                             "--num-requests", "6", "--dtype", "float32", "--ignore-eos", "--json",
                             "--steps-jsonl", str(steps))
    assert code == 0, err
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 6 and all(r["stats"]["latency_s"] > 0 for r in recs)
    for i, rec in enumerate(recs):  # greedy output is the target's, whatever k the policy picked
        prompt = ["def f(x):", "import os"][i % 2]
        assert rec["token_ids"] == hf_greedy(tiny_llama.target, tiny_llama.tokenizer(prompt).input_ids, 10)
    lines = steps.read_text().splitlines()
    records = read_jsonl(steps)  # the one step-record spelling (telemetry/records.py), schema v1
    assert lines and len(records) == len(lines) and records[0].sample.verify_s > 0
    assert sum(r.emitted for r in records) == 6 * 10
    assert "k per request-step" in err


def test_ngram_draft_and_human_output(capsys: pytest.CaptureFixture[str], tiny_dirs: tuple[Path, Path]) -> None:
    code, out, err = run_cli(capsys, "generate", "--target", str(tiny_dirs[0]), "--draft", "ngram", "--prompt",
                             "ab ab ab ab", "--max-tokens", "5", "--policy", "fixed:2")
    assert code == 0 and "--- prompt 1 ---" in out and "tok/s" in err


@pytest.fixture
def mismatched_draft(tmp_path: Path, tiny_dirs: tuple[Path, Path]) -> Path:
    from smartspec.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_dirs[1])
    tok.add_tokens(["<other>"])
    folder = tmp_path / "other-draft"
    folder.mkdir()
    for f in tiny_dirs[1].iterdir():
        if f.is_file() and not f.name.startswith("tokenizer"):
            (folder / f.name).write_bytes(f.read_bytes())
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", ""], "prompt 1 is empty"),
        (["--prompt", "x", "--max-tokens", "0"], "max_tokens"),
        (["--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--prompt", "x", "--top-p", "0"], "top_p"),
        (["--prompt", "x", "--top-p", "1.5"], "top_p"),
        (["--prompt", "x" * 1100], "context"),
        (["--prompt", "x", "--rate", "0"], "--rate must be > 0"),
        (["--prompt", "x", "--num-requests", "0"], "--num-requests"),
        (["--prompt", "x", "--hysteresis", "0.5"], "hysteresis"),
        (["--prompt", "x", "--cost-model", "nosuch"], "unknown cost model"),
        (["--prompt", "x", "--policy", "fixed:99"], "fixed:K"),
        (["--prompt", "x", "--policy", "sometimes"], "unknown --policy"),
        ([], "at least one --prompt"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tiny_dirs: tuple[Path, Path], extra: list[str], message: str
) -> None:
    target, draft = map(str, tiny_dirs)
    policy = [] if "--policy" in extra else ["--policy", "fixed:2"]
    code, out, err = run_cli(capsys, "generate", "--target", target, "--draft", draft, *policy, *extra)
    assert code == 2, err
    assert message in err and out == ""


def test_unknown_paths_and_mismatched_draft(
    capsys: pytest.CaptureFixture[str], tiny_dirs: tuple[Path, Path], mismatched_draft: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "generate", "--target", str(tmp_path / "missing"), "--prompt", "x")
    assert code == 2 and "no model at" in err
    code, _, err = run_cli(capsys, "generate", "--target", str(tiny_dirs[0]), "--draft", str(mismatched_draft),
                           "--prompt", "x", "--policy", "fixed:2")
    assert code == 2 and "tokenizer differs" in err


def test_models_path_before_fetch_says_what_to_do(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SMARTSPEC_MODEL_CACHE", str(tmp_path))
    code, _, err = run_cli(capsys, "models", "path", "target")
    assert code == 2 and "smartspec models fetch" in err
    code, _, err = run_cli(capsys, "models", "fetch", "bogus")
    assert code == 2 and "unknown model role" in err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("smartspec")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "generate" in result.stdout
