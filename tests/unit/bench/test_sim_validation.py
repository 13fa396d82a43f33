"""bench.sim_validation's flags are flags `smartspec sim sweep` takes, and say what the script means."""

from __future__ import annotations

import argparse

from bench.sim_validation import effect_args
from smartspec.cli import sim as sim_cli


def parse(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smartspec")
    sim_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["sim", "sweep", *flags])


def test_effect_flags_parse_as_sim_sweep_flags() -> None:
    replay = parse(effect_args(True, 0.12, 5.0))  # static policies: the measured sweep's constant deadline
    assert replay.cold_start and not replay.no_deadline and replay.noise_sigma == 0.12
    assert replay.draft_deadline_floor_s == replay.draft_deadline_s == 5.0
    predict = parse(effect_args(True, 0.12, None))  # goodput: the target's own deadline
    assert predict.cold_start and (predict.draft_deadline_factor, predict.draft_deadline_floor_s,
                                   predict.draft_deadline_s) == (2.0, 0.25, 5.0)
    old = parse(effect_args(False, 0.12, 5.0))  # the simulator before it modelled any of it
    assert old.no_deadline and old.cores == 0 and old.noise_sigma == 0 and not old.cold_start


def test_prefill_padding_is_restored_from_the_prompts_in_arrival_order() -> None:
    from bench.sim_validation import with_prefill_padding

    requests = [{"rate": "0.5", "arrival_s": "2.0", "prompt_tokens": "30"},
                {"rate": "0.5", "arrival_s": "1.0", "prompt_tokens": "100"},
                {"rate": "0.8", "arrival_s": "0.5", "prompt_tokens": "50"}]
    steps = [{"num_prefills": "1", "prefill_tokens": "172"},  # a warm-up request: not in the records
             {"num_prefills": "1", "prefill_tokens": "100"},
             {"num_prefills": "0", "prefill_tokens": "0"},
             {"num_prefills": "2", "prefill_tokens": "80"},
             {"num_prefills": "1", "prefill_tokens": "64", "prefill_padded_tokens": "64"}]  # a newer record
    assert with_prefill_padding(steps, requests) == 2
    assert [s.get("prefill_padded_tokens") for s in steps] == [None, "100", None, "100", "64"]
