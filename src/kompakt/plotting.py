"""Labels that stay readable where points cluster: each point gets a number placed where it
overlaps no other number (tried around the point, nearest first), and a key beside the axes says
what each number is. Names printed at the points themselves overlapped as soon as three bundles
of one model sat together (the pipeline's TT and MetaHead bundles)."""

from __future__ import annotations

# offsets (points) tried around a marker, nearest first
_OFFSETS = [(5, 5), (5, -11), (-11, 5), (-11, -11), (9, -3), (-15, -3), (-3, 9), (-3, -15)]
_OFFSETS += [(2 * dx, 2 * dy) for dx, dy in _OFFSETS]


def numbered_labels(
    ax, points: list[tuple[float, float]], keys: list[str], title: str = ""
) -> None:
    """Number the points 1..n on `ax` without overlapping numbers, and write the key (`n  key`
    per line) to the right of the axes. Call after everything is plotted and the limits set."""
    ax.figure.canvas.draw()  # the final limits, so data -> pixel positions hold
    scale = ax.figure.dpi / 72.0
    placed: list[tuple[float, float]] = []
    for number, (x, y) in enumerate(points, 1):
        px, py = ax.transData.transform((x, y))
        chosen = _OFFSETS[0]
        for dx, dy in _OFFSETS:
            cx, cy = px + dx * scale, py + dy * scale
            if all(abs(cx - qx) > 13 * scale or abs(cy - qy) > 10 * scale for qx, qy in placed):
                chosen = (dx, dy)
                break
        placed.append((px + chosen[0] * scale, py + chosen[1] * scale))
        ax.annotate(
            str(number),
            (x, y),
            xytext=chosen,
            textcoords="offset points",
            fontsize=8,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
        )
    lines = [title] if title else []
    lines += [f"{n:>2}  {key}" for n, key in enumerate(keys, 1)]
    ax.text(
        1.02,
        1.0,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=7,
        family="monospace",
    )


def spread_axis(ax, values: list[float], axis: str = "x") -> None:
    """A log scale where the values span more than 20x, so the fast ones are not squashed."""
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
