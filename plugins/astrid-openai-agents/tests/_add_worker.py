"""Run by test_processes.py in its own interpreter: add items one call at a time."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agents_backends import make_backend
from astrid.store import SessionStore

from astrid_openai_agents import AstridSession


async def main(kind: str, where: str, name: str, count: int, go: Path) -> None:
    with SessionStore(make_backend(kind, Path(where))) as store:
        session = AstridSession("shared", store)
        go.with_name(f"ready-{name}").touch()
        while not go.exists():  # both processes begin together
            await asyncio.sleep(0.005)
        for n in range(count):
            await session.add_items([{"role": "user", "content": f"{name}-{n}"}])


if __name__ == "__main__":
    kind, where, name, count, go = sys.argv[1:]
    asyncio.run(main(kind, where, name, int(count), Path(go)))
