"""The overview's two charts as SVG drawn on the server: no charting library, no script.

Each chart is a list of shapes in a fixed viewBox; the template writes them out."""

from __future__ import annotations

from typing import Any, Callable

HOURS = 24
WIDTH, HEIGHT, LEFT, BOTTOM = 720, 200, 40, 20
PALETTE = ("#2f6fb0", "#e08a1e", "#3b9e5a", "#c0392b", "#8e5ab5", "#7f8c8d")
TOP_CODES = len(PALETTE) - 1  # the rest share the last colour


def _hours(now: float) -> list[int]:
    last = int(now // 3600)
    return list(range(last - HOURS + 1, last + 1))


def _frame(hours: list[int], peak: float) -> dict[str, Any]:
    step = (WIDTH - LEFT) / len(hours)
    labels = [{"x": LEFT + i * step + step / 2, "text": f"{hour % 24:02d}h"} for i, hour in enumerate(hours)
              if i % 3 == 0]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "bottom": HEIGHT - BOTTOM, "step": step,
            "peak": peak, "labels": labels}


def events_chart(rows: list[dict[str, Any]], now: float, label: Callable[[str], str]) -> dict[str, Any]:
    """Events per hour over the last 24 h, stacked by trigger code (the busiest codes each in
    their own colour)."""
    hours = _hours(now)
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["code"]] = totals.get(row["code"], 0) + row["count"]
    top = sorted(totals, key=lambda code: -totals[code])[:TOP_CODES]
    colour = {code: PALETTE[i] for i, code in enumerate(top)}
    per_hour: dict[int, dict[str, int]] = {}
    for row in rows:
        key = row["code"] if row["code"] in colour else ""
        bucket = per_hour.setdefault(row["hour"], {})
        bucket[key] = bucket.get(key, 0) + row["count"]
    peak = max((sum(b.values()) for b in per_hour.values()), default=0)
    frame = _frame(hours, peak)
    scale = (HEIGHT - BOTTOM - 10) / peak if peak else 0
    bars = []
    for i, hour in enumerate(hours):
        y = HEIGHT - BOTTOM
        for code in [*top, ""]:
            count = per_hour.get(hour, {}).get(code, 0)
            if not count:
                continue
            height = count * scale
            y -= height
            bars.append({"x": LEFT + i * frame["step"] + 1, "y": y, "width": frame["step"] - 2, "height": height,
                         "colour": colour.get(code, PALETTE[-1]),
                         "title": f"{hour % 24:02d}h {code or '…'}: {count}"})
    legend = [{"colour": colour[code], "text": f"{code} ({label(code)})", "count": totals[code]} for code in top]
    others = sum(totals.values()) - sum(totals[code] for code in top)
    if others:
        legend.append({"colour": PALETTE[-1], "text": "…", "count": others})
    return {**frame, "bars": bars, "legend": legend, "total": sum(totals.values())}


def latency_chart(rows: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """Each hour's mean delivery latency as a bar, its longest as a tick above."""
    hours = _hours(now)
    by_hour = {row["hour"]: row for row in rows}
    peak = max((row["longest"] for row in rows), default=0.0)
    frame = _frame(hours, peak)
    scale = (HEIGHT - BOTTOM - 10) / peak if peak else 0
    bars, ticks = [], []
    for i, hour in enumerate(hours):
        row = by_hour.get(hour)
        if not row:
            continue
        x = LEFT + i * frame["step"] + 1
        height = row["mean"] * scale
        bars.append({"x": x, "y": HEIGHT - BOTTOM - height, "width": frame["step"] - 2, "height": height,
                     "colour": PALETTE[0],
                     "title": f"{hour % 24:02d}h: {row['count']}, mean {row['mean']:.2f} s, longest "
                              f"{row['longest']:.2f} s"})
        ticks.append({"x1": x, "x2": x + frame["step"] - 2, "y": HEIGHT - BOTTOM - row["longest"] * scale})
    return {**frame, "bars": bars, "ticks": ticks, "legend": [], "total": sum(row["count"] for row in rows)}
