"""Send one streaming chat request to a running smartspec stack and print the reply and its speculation usage."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import openai

from smartspec.cli import stackfile


def api_key() -> str:
    """$OPENAI_API_KEY, else the key `smartspec up` generated (its file is named in the stack file)."""
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ["OPENAI_API_KEY"]
    info = stackfile.read() or {}
    path = info.get("api_key_file")
    return Path(path).read_text().strip() if path else "none (the stack runs without keys)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--prompt", default="Write a Python function that returns the n-th Fibonacci number.")
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=api_key())
    model = client.models.list().data[0].id
    print(f"> {args.prompt}\n", flush=True)
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True})
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            sys.stdout.write(chunk.choices[0].delta.content)
            sys.stdout.flush()
        if chunk.usage is not None:
            usage = chunk.usage
    wall = time.perf_counter() - t0
    print()
    if usage is not None:
        spec = (usage.model_extra or {}).get("speculation", {})
        print(f"\n[{usage.completion_tokens} tokens in {wall:.1f}s = {usage.completion_tokens / wall:.1f} tok/s; "
              f"speculation: draft_tokens={spec.get('draft_tokens')} accepted_tokens={spec.get('accepted_tokens')} "
              f"acceptance_rate={spec.get('acceptance_rate')} mean_k={spec.get('mean_k')}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
