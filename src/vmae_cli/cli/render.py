"""Terminal renderings of results (rich tables on stdout)."""

from __future__ import annotations

from .ui import stdout_console


def print_classification(record: dict) -> None:
    """A table of the top labels; with a timeline, one compact row per segment."""
    from rich.table import Table

    if not record["ok"]:
        return  # errors are reported on stderr
    console = stdout_console()
    if "segments" in record:
        table = Table(title=f"{record['path']}  {_timeline_summary(record['timeline'])}", title_justify="left",
                      caption=_timeline_caveat(record["timeline"]), caption_justify="left")  # fmt: skip
        for col, justify in (("start", "right"), ("end", "right"), ("frames", "right"), ("label", "left"),
                             ("score", "right")):  # fmt: skip
            table.add_column(col, justify=justify)
        for seg in record["segments"]:
            top = seg["predictions"][0]
            frames = [f for clip in seg["clips"] for f in clip["frames"]]
            table.add_row(f"{seg['start']:.2f}", f"{seg['end']:.2f}", f"{min(frames)}-{max(frames)}", top["label"],
                          f"{top['score']:.3f}")  # fmt: skip
        console.print(table)
        return
    table = Table(title=f"{record['path']}  ({record['views']} view{'s' if record['views'] != 1 else ''})",
                  title_justify="left")  # fmt: skip
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    for rank, p in enumerate(record["predictions"], 1):
        table.add_row(str(rank), p["label"], f"{p['score']:.3f}")
    console.print(table)


def _timeline_summary(t: dict) -> str:
    """What a timeline did, in words: window, hop, clips per window and how each clip samples."""
    views = t["clips_per_window"] * t["crops"]
    if t["sampling"] == "uniform":
        clips = f"{t['frames']} segments spread over each window (as the model was trained)"
        if t["clips_per_window"] > 1:
            clips += f", {t['clips_per_window']} views (segment starts and middles)"
    else:
        per = t["clips_per_window"]
        clips = (f"{per} clip{'s' if per != 1 else ''} of {t['frames']} frames x stride {t['stride']} "
                 f"({t['clip_seconds']:.2f} s) per window")  # fmt: skip
    crops = f", {t['crops']} crops" if t["crops"] > 1 else ""
    return (f"({t['window']:.2f} s windows every {t['hop']:.2f} s; {clips}{crops}; "
            f"{views} view{'s' if views != 1 else ''} averaged per window)")  # fmt: skip


def _timeline_caveat(t: dict) -> str | None:
    if not t.get("clip_longer_than_window"):
        return None
    return (f"a clip ({t['clip_seconds']:.2f} s) is longer than the {t['window']:.2f} s window: each window is "
            "classified by the clip centred on it, which reaches beyond the window")  # fmt: skip
