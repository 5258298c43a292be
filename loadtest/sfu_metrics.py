"""What the SFU says about itself: a Prometheus `/metrics` scrape, or `/proc/PID` for a local one.

`parse_prometheus(text)` reads the text exposition format into (name, labels, value) samples;
`Snapshot` keeps the few numbers the report needs: forwarded packets, process CPU seconds, RSS.
An SFU with media worker processes (`rtc.workers`) counts as all of them: the scrape adds its
`sfu_worker_cpu_seconds`, `/proc` adds the process's children.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["Snapshot", "metrics_url_for", "parse_prometheus", "scrape"]

SCRAPE_TIMEOUT_S = 15.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        samples.append((match.group(1), labels, value))
    return samples


@dataclass(frozen=True)
class Snapshot:
    t: float
    packets_out: float | None
    cpu_s: float | None
    rss_bytes: float | None
    packets_dropped: float | None = None


def metrics_url_for(url: str) -> str:
    """`ws://host:port` → `http://host:port/metrics` (the SFU serves both on one port)."""
    http = re.sub(r"^ws", "http", url.rstrip("/"))
    return f"{http}/metrics"


def _proc(pid: int, children: bool = True) -> tuple[float | None, float | None]:
    """CPU seconds and RSS of ``pid`` and (``children``) of its child processes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / tick
        rss = float(int(fields[21]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, IndexError, ValueError):
        return None, None
    if children:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        for kid in kids:
            kid_cpu, kid_rss = _proc(int(kid), children=False)
            cpu += kid_cpu or 0.0
            rss += kid_rss or 0.0
    return cpu, rss


async def scrape(metrics_url: str | None, pid: int | None = None) -> Snapshot:
    """Read the counters now; fields are None when unavailable."""
    packets = cpu = rss = dropped = None
    if metrics_url:
        try:
            # generous: a saturated server answers late, and a missing scrape loses a figure
            async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S) as client:
                response = await client.get(metrics_url)
            if response.status_code == 200:
                for name, labels, value in parse_prometheus(response.text):
                    if name == "livekit_packet_total" and labels.get("direction") == "outgoing":
                        packets = (packets or 0.0) + value
                    elif name in ("livekit_packet_dropped", "livekit_packet_dropped_total"):
                        dropped = (dropped or 0.0) + value
                    elif name in ("process_cpu_seconds_total", "sfu_worker_cpu_seconds_total"):
                        cpu = (cpu or 0.0) + value
                    elif name == "process_resident_memory_bytes":
                        rss = value
        except httpx.HTTPError:
            pass
    if pid is not None:
        proc_cpu, proc_rss = _proc(pid)
        cpu = proc_cpu if proc_cpu is not None else cpu
        rss = proc_rss if proc_rss is not None else rss
    return Snapshot(time.monotonic(), packets, cpu, rss, dropped)
