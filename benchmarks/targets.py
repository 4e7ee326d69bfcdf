"""The targets of issue 6 (storage) and issue 17 (the runtime's cost per turn), judged from
result rows."""

from __future__ import annotations

from harness import Row, Target, find

TAIL_MAX_US = 1000.0
LIST_MAX_MS = 10.0
FLAT_MAX = 1.2
SECURITY_MAX = 1.5
DISK_MAX = 1.5
APPEND_VS_OPENAI_MAX = 0.25
LOAD_VS_OPENAI_MAX = 1.0
FLOOR_MAX = 2.0
TURN_MAX_MS = 5.0
TURN_VS_FASTEST_PEER_MAX = 0.1
TURN_FLAT_MAX = 1.2


def _ratio(a: Row | None, b: Row | None) -> float | None:
    if a is None or b is None or not b.median:
        return None
    return a.median / b.median  # type: ignore[operator]


def _security_target(rows: list[Row], system: str, variant: str, n: int) -> Target:
    """Security state <= 1.5x plain: judged on the median of the per-round ratios when the
    variants ran interleaved with plain (``*_ratio`` rows), else on the ratio of the medians."""
    name = f"{system} security ({variant}) at {n:,} <= {SECURITY_MAX}x plain"
    sec = find(rows, f"append_save_security_{variant}", system, n)
    paired = find(rows, f"append_save_security_{variant}_ratio", system, n)
    if sec is not None and paired is not None and paired.median is not None:
        vs_control = paired.extra["vs_control"]
        return Target(
            name,
            paired.median <= SECURITY_MAX,
            f"{sec.median:.0f} vs {paired.extra['plain_us']:.0f} us; median of per-round ratios "
            f"{paired.median:.2f}x [p10-p90 {paired.p10:.2f}-{paired.p90:.2f}]; to the control "
            f"(plain + the same untimed git move, {paired.extra['control_us']:.0f} us): "
            f"{vs_control[0]:.2f}x [{vs_control[1]:.2f}-{vs_control[2]:.2f}]",
        )
    plain = find(rows, "append_save", system, n)
    r = _ratio(sec, plain)
    if r is None:
        return Target(name, None, "missing")
    control = find(rows, "append_save_security_control", system, n)
    rc = _ratio(sec, control)
    versus = (
        ""
        if rc is None
        else f"; {rc:.2f}x the control (plain + the same untimed git move: "
        f"{control.median:.0f} us)"  # type: ignore[union-attr]
    )
    return Target(
        name,
        r <= SECURITY_MAX,
        f"{sec.median:.0f} / {plain.median:.0f} us = {r:.2f}x{versus}",  # type: ignore[union-attr]
    )


def own_targets(
    rows: list[Row], system: str, small: int = 1_000, big: int = 10_000
) -> list[Target]:
    """Targets that need only astrid's own figures, for one backend."""
    out: list[Target] = []
    a1, a10 = find(rows, "append_save", system, small), find(rows, "append_save", system, big)
    r = _ratio(a10, a1)
    if r is None:
        out.append(
            Target(f"{system} append+save at {big:,} <= {FLAT_MAX}x at {small:,}", None, "missing")
        )
    else:
        same = a1 is not None and a10 is not None and a1.note[:4] == a10.note[:4]
        how = "" if same else " (different methods: loop vs at-N)"
        out.append(
            Target(
                f"{system} append+save at {big:,} <= {FLAT_MAX}x at {small:,}",
                r <= FLAT_MAX,
                f"{a10.median:.0f} / {a1.median:.0f} us = {r:.2f}x{how}",  # type: ignore[union-attr]
            )
        )
    floor = find(rows, "append_save_floor_ratio", system, big)
    if floor is not None:
        out.append(
            Target(
                f"{system} append+save at {big:,} <= {FLOOR_MAX}x a bare sqlite3 INSERT + COMMIT",
                floor.median <= FLOOR_MAX,  # type: ignore[operator]
                f"{floor.note}; median of per-round ratios {floor.median:.2f}x "
                f"[p10-p90 {floor.p10:.2f}-{floor.p90:.2f}]",
            )
        )
    for variant in ("bounded", "single_use", "growing"):
        for n in (small, big):
            out.append(_security_target(rows, system, variant, n))
    tail = find(rows, "load_tail20", system, big)
    out.append(
        Target(
            f"{system} tail 20 of {big:,} <= 1 ms",
            None if tail is None else tail.median <= TAIL_MAX_US,  # type: ignore[operator]
            "missing" if tail is None else f"{tail.median:.0f} us",
        )
    )
    lst = find(rows, "list50", system)
    if lst is None:
        out.append(Target(f"{system} list 50 of 10,000 <= 10 ms", None, "missing"))
    else:
        capped = lst.n is not None and lst.n < 10_000
        out.append(
            Target(
                f"{system} list 50 of {lst.n:,} <= 10 ms",
                None if capped else lst.median <= LIST_MAX_MS,  # type: ignore[operator]
                f"{lst.median:.2f} ms" + (" (M capped: not judged)" if capped else ""),
            )
        )
    for mode in ("one_session", "distinct"):
        c = find(rows, f"concurrent_{mode}", system)
        if c is None:
            continue
        bad = c.extra.get("errors", 0) + c.extra.get("lost", 0) + c.extra.get("duplicated", 0)
        out.append(
            Target(
                f"{system} concurrency ({mode}): zero errors/lost/duplicated",
                bad == 0,
                f"errors {c.extra.get('errors')}, lost {c.extra.get('lost')}, duplicated "
                f"{c.extra.get('duplicated')}; {c.median:,.0f} msg/s",
            )
        )
    disk = find(rows, "disk_bytes_per_msg", system, big) or find(rows, "disk_bytes_per_msg", system)
    if disk is not None:
        ratio = disk.extra["ratio_to_json"]
        out.append(
            Target(
                f"{system} disk at {disk.n:,} <= {DISK_MAX}x JSON",
                ratio <= DISK_MAX,
                f"{disk.median:,.0f} B/msg vs {disk.extra['json_bytes'] / disk.extra['messages']:,.0f} "
                f"B/msg JSON = {ratio:.2f}x",
            )
        )
    return out


def peer_targets(rows: list[Row], ours: str, openai: str) -> list[Target]:
    """Targets relative to the OpenAI SQLiteSession.

    Judged on the median of the per-round ratios when the two were measured interleaved
    (``*_ratio`` rows), else on the ratio of the medians.
    """
    out: list[Target] = []
    checks = [
        ("append_save", n, APPEND_VS_OPENAI_MAX, "us/msg", "append+save", "")
        for n in (1_000, 10_000)
    ]
    checks.append(("load_whole", 10_000, LOAD_VS_OPENAI_MAX, "ms", "whole load", " get_items()"))
    for op, n, limit, unit, label, suffix in checks:
        a, b = find(rows, op, ours, n), find(rows, op, openai, n)
        paired = find(rows, f"{op}_ratio", ours, n)
        name = f"{ours} {label} at {n:,} <= {limit}x OpenAI SQLiteSession{suffix}"
        r = paired.median if paired is not None else _ratio(a, b)
        if r is None or a is None or b is None:
            out.append(Target(name, None, "missing"))
            continue
        how = (
            f"median of per-round ratios {r:.2f}x [p10-p90 {paired.p10:.2f}-{paired.p90:.2f}]"
            if paired is not None
            else f"{r:.2f}x"
        )
        out.append(Target(name, r <= limit, f"{a.median:.1f} vs {b.median:.1f} {unit}; {how}"))
    return out


def turn_targets(rows: list[Row], ours: str, peers: list[str]) -> list[Target]:
    """Issue 17: astrid's overhead per turn under 5 ms, at most 0.1x the fastest peer's, and
    flat (the median of the last 10 turns within 1.2x the first 10's)."""
    mine = find(rows, "turn_overhead", ours)
    if mine is None or mine.median is None:
        return [Target(f"{ours} per-turn overhead", None, "missing")]
    out = [
        Target(
            f"{ours} per-turn overhead < {TURN_MAX_MS:g} ms",
            mine.median < TURN_MAX_MS,
            f"median {mine.median:.2f} ms, p90 {mine.p90:.2f} ms over {mine.runs} turns",
        )
    ]
    ran = [r for p in peers if (r := find(rows, "turn_overhead", p)) is not None]
    if ran:
        fastest = min(ran, key=lambda r: r.median or 0.0)
        ratio = mine.median / fastest.median if fastest.median else None
        out.append(
            Target(
                f"{ours} per-turn overhead <= {TURN_VS_FASTEST_PEER_MAX:g}x the fastest peer",
                None if ratio is None else ratio <= TURN_VS_FASTEST_PEER_MAX,
                f"{mine.median:.2f} ms vs {fastest.system} {fastest.median:.2f} ms = "
                + ("n/a" if ratio is None else f"{ratio:.3f}x"),
            )
        )
    else:
        out.append(Target(f"{ours} per-turn overhead vs the fastest peer", None, "no peer ran"))
    flat = find(rows, "turn_flatness", ours)
    out.append(
        Target(
            f"{ours} per turn flat: last 10 turns within {TURN_FLAT_MAX:g}x the first 10",
            None if flat is None or flat.median is None else flat.median <= TURN_FLAT_MAX,
            "missing" if flat is None else f"{flat.median:.2f}x over {mine.n} turns",
        )
    )
    return out
