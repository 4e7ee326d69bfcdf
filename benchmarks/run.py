"""astrid storage benchmarks (issue 6): the nine operations on every built-in backend.

Usage::

    python benchmarks/run.py [--quick] [--json] [--backends memory,file,sqlite]
                             [--ops create,append,floor,security,load,list,compact,concurrency]
                             [--sqlite-synchronous NORMAL|FULL] [--out FILE.json]

Prints a table (median and p10-p90 over repeated runs; what one run is is in the JSON's
``sample``) and the targets that need no peer. ``make bench`` runs it; ``make bench-peers``
compares with the OpenAI Agents SDK, LangGraph and Google ADK (``benchmarks/peers.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ensure_paths

ensure_paths()

from harness import emit_payload, machine, print_setting, table
from ours import BACKENDS, OPS, Plan, durability, run_backend, system_name, with_sync
from targets import own_targets

OP_TITLES = """\
create                       1. create a session: new_session + first save
append_save                  2. append one message + save (per message)
append_save_floor            2b. the floor: a bare sqlite3 INSERT + COMMIT of the same message
                                JSON at the same durability (WAL + synchronous), no astrid code;
                                _ratio: astrid's loop / the floor's, per interleaved round
append_save_security_*       3. the same, with the session's security state changed before every
                                save (untimed): a budget charge, an escape decision (AllowAlways),
                                git state captured by the fs capture from a real repo whose branch
                                moves every turn, and an allowance:
                                  bounded    - the previous session allowance removed, a new one added
                                  single_use - a max_uses=1 allowance granted, the previous one used
                                  growing    - a new allowance and a new escape path every turn
                                  control    - no security state and no git capture: only the
                                               untimed git move (a file write), the baseline
                                               that isolates what astrid adds
load_whole                   4. load a whole session of N
load_tail20                  5. load the last 20 of N
list50                       6. first page of 50 out of M sessions
compact / load_after_compact 7. summarize (compact) a long session, then load it again
concurrent_*                 8. P processes x K append_messages to one / distinct sessions
disk_bytes_per_msg           9. bytes on disk per message vs the compact JSON of the messages"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down run (a few minutes)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--sqlite-synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    args = parser.parse_args(argv)

    plan = Plan.quick() if args.quick else Plan.full()
    plan = with_sync(plan, args.sqlite_synchronous)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}")
    for o in ops:
        if o not in OPS:
            parser.error(f"unknown op {o!r}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine()
    started = time.perf_counter()
    rows = []
    for b in backends:
        rows += run_backend(b, plan, ops, log)
    elapsed = time.perf_counter() - started
    systems = [system_name(b, plan.sqlite_synchronous) for b in backends]
    verdicts = [t for s in systems for t in own_targets(rows, s)]
    durabilities = {
        system_name(b, plan.sqlite_synchronous): durability(b, plan.sqlite_synchronous)
        for b in backends
    }
    payload = {
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "seconds": round(elapsed, 1),
        "durability": durabilities,
        "rows": rows,
        "targets": [{"name": t.name, "ok": t.ok, "detail": t.detail} for t in verdicts],
    }
    if emit_payload(payload, args.out, args.json):
        return 0
    print(f"astrid storage benchmarks ({payload['mode']} run, {elapsed:.0f} s)")
    print_setting(info, durabilities, "durability:")
    print()
    print(table(sorted(rows, key=lambda r: (OPS_ORDER(r.op), r.n or 0, r.system))))
    print()
    print("operations:")
    print(OP_TITLES)
    print()
    print("targets (medians; the ratios to the OpenAI SQLiteSession are in `make bench-peers`):")
    for t in verdicts:
        print(t.line())
    return 0


_ORDER = [
    "create",
    "append_save",
    "append_save_floor",
    "append_save_floor_ratio",
    "append_save_security_bounded",
    "append_save_security_single_use",
    "append_save_security_growing",
    "append_save_security_control",
    "append_save_security_bounded_ratio",
    "append_save_security_single_use_ratio",
    "append_save_security_growing_ratio",
    "load_whole",
    "load_tail20",
    "list50",
    "compact",
    "load_after_compact",
    "concurrent_one_session",
    "concurrent_distinct",
    "disk_bytes_per_msg",
]


def OPS_ORDER(op: str) -> int:
    return _ORDER.index(op) if op in _ORDER else len(_ORDER)


if __name__ == "__main__":
    raise SystemExit(main())
