"""Recorded draft/target agreement: which output positions a real run's drafts passed, read from batch-1 step records.

At batch 1 a step record is one request's step: it proposed k drafts and accepted a of them, so output
positions t … t+a-1 agreed and t+a (when a < k) did not. Under greedy decoding whether the draft's proposal
at a position matches the target's token depends on the prefix only, not on where the step began, so the
positions one run tested answer for any policy (up to the rounding of a wider verify). Several runs of the
same prompts (static k = 3, 5, 7) together cover each other's untested positions (the bonus token after a
fully accepted step, any k = 0 step); a position no run tested counts as agreeing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from smartspec.errors import InvalidRequest
from smartspec.telemetry.records import BadRecord, StepRecord, read_jsonl


@dataclass(frozen=True)
class RecordedRequest:
    """One request of a recorded run: its prompt and output lengths and what its drafts showed per position."""

    prompt_len: int
    output_len: int
    known: dict[int, bool]  # output position -> the draft agreed there

    def agreement(self) -> tuple[bool, ...]:
        return tuple(self.known.get(t, True) for t in range(self.output_len))


def read_requests(records: Iterable[StepRecord], *, source: str = "steps") -> list[RecordedRequest]:
    """The requests of one batch-1 run, in order (calibration steps are skipped)."""
    out: list[RecordedRequest] = []
    prompt = t = 0
    known: dict[int, bool] = {}
    for n, rec in enumerate(records, 1):
        if rec.calibration:
            continue
        batch, prefills = rec.batch_size, rec.num_prefills
        if batch > 1 or prefills > 1 or (batch and prefills):
            raise InvalidRequest(f"{source}: record {n} is a step of {batch} running and {prefills} new requests; "
                                 "only runs at batch 1 (a closed loop of one) say which request drafted what")
        if prefills:
            if prompt:
                out.append(RecordedRequest(prompt, t, known))
            prompt, t, known = rec.sample.shape.prefill_tokens, 1, {}
            continue
        if not prompt:
            continue  # a decode step before any prompt of this file: its request started elsewhere
        accepted = sum(sum(counts[1]) for counts in rec.acceptance.values())
        for j in range(accepted):
            known[t + j] = True
        if accepted < rec.max_k:
            known[t + accepted] = False
        t += rec.emitted
    if prompt:
        out.append(RecordedRequest(prompt, t, known))
    return out


def merge(runs: Sequence[Sequence[RecordedRequest]]) -> tuple[list[RecordedRequest], int]:
    """One request list from runs of the same prompts in the same order; returns it and the number of
    positions where runs disagreed (the first run's answer is kept)."""
    if not runs:
        raise InvalidRequest("no recorded runs to merge")
    n = min(len(r) for r in runs)
    merged, conflicts = [], 0
    for i in range(n):
        reqs = [r[i] for r in runs]
        if len({(q.prompt_len, q.output_len) for q in reqs}) != 1:
            raise InvalidRequest(f"request {i}: the runs differ in prompt or output length "
                                 f"({[(q.prompt_len, q.output_len) for q in reqs]}); they are not the same prompts")
        known: dict[int, bool] = {}
        for q in reqs:
            for pos, ok in q.known.items():
                if pos in known and known[pos] != ok:
                    conflicts += 1
                else:
                    known.setdefault(pos, ok)
        merged.append(RecordedRequest(reqs[0].prompt_len, reqs[0].output_len, known))
    return merged, conflicts


def read_files(paths: Sequence[Path]) -> tuple[list[RecordedRequest], int]:
    """`merge` over the step-record files (JSON lines) of several runs."""
    runs = []
    for path in paths:
        try:
            records = read_jsonl(path)
        except OSError as exc:
            raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
        except BadRecord as exc:
            raise InvalidRequest(str(exc)) from None
        runs.append(read_requests(records, source=str(path)))
    return merge(runs)
