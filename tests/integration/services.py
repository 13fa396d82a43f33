"""Start the draft and target services for a test (in the loop thread) and stop them afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smartspec_draft import server as draft_server
from smartspec_draft.settings import DraftSettings
from smartspec_target import server as target_server
from smartspec_target.settings import TargetSettings
from tests.integration.conftest import LoopThread


@dataclass
class Stack:
    loop: LoopThread
    target: Any  # TargetService
    draft: Any = None  # (RunningServer, DraftServicer) when in-process

    @property
    def url(self) -> str:
        return self.target.base_url

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.target.grpc.port}"

    def stop(self) -> None:
        self.loop.run(self.target.drain_and_stop(10))
        if self.draft is not None:
            self.loop.run(self.draft[0].stop())


def start_stack(loop: LoopThread, models: dict[str, Any], *, draft: str | None = "inproc", **target_kw: Any) -> Stack:
    """draft: "inproc" (a draft service in this process), an address "host:port", or None."""
    running = None
    address = None
    if draft == "inproc":
        running = loop.run(draft_server.start(DraftSettings(model=models["draft"], port=0, dtype="float32")))
        address = f"127.0.0.1:{running[0].port}"
    elif draft is not None:
        address = draft
    settings = TargetSettings(model=models["target"], http_port=0, grpc_port=0, dtype="float32",
                              draft_address=address, **target_kw)
    target = loop.run(target_server.start(settings))
    return Stack(loop, target, running)
