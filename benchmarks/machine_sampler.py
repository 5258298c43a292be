"""Sample the machine every few seconds during a load test: where the CPU goes, and where UDP drops.

    .venv/bin/python benchmarks/machine_sampler.py --sfu-pid PID --loadtest-pid PID \\
        --out benchmarks/results/500/machine.json [--interval 5] [--max-duration 900]

Each sample holds the machine's CPU by state (`/proc/stat`, in % of one core, so 200 = both cores
of a 2-vCPU box), each watched process's CPU % and RSS (the SFU, and each of its media worker
processes as `sfu-worker0`, `sfu-worker1`, …; the load tester's main process; its worker
processes summed), UDP datagrams/s and receive-buffer drops (`/proc/net/snmp`), and per
process group the UDP sockets' current and largest receive queue and their drop counters
(`/proc/net/udp`, matched to processes through `/proc/PID/fd`). It stops when the load tester
exits, after `--max-duration`, or on Ctrl-C, and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CPU_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1 : 1 + len(CPU_STATES)]]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def proc_cpu_rss(pid: int) -> tuple[int, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE


def udp_counters() -> dict[str, int]:
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    header, values = [row for row in lines if row[0] == "Udp:"][:2]
    return dict(zip(header[1:], map(int, values[1:]), strict=True))


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def udp_sockets() -> dict[str, tuple[int, int]]:
    """inode → (rx_queue bytes, drops) for every IPv4/IPv6 UDP socket."""
    out = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            rx_queue = int(cols[4].split(":")[1], 16)
            out[cols[9]] = (rx_queue, int(cols[12]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sfu-pid", type=int, required=True)
    parser.add_argument("--loadtest-pid", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--max-duration", type=float, default=900.0)
    args = parser.parse_args()
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    udp_start = udp_counters()
    prev_cpu, prev_udp, prev_wall = cpu_times(), udp_start, started
    prev_proc: dict[int, int] = {}
    max_queue: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    while not stop and time.monotonic() - started < args.max_duration:
        time.sleep(args.interval)
        if proc_cpu_rss(args.loadtest_pid) is None:
            break
        now = time.monotonic()
        wall = now - prev_wall
        cpu = cpu_times()
        udp = udp_counters()
        groups = {
            "sfu": [args.sfu_pid],
            "loadtest-main": [args.loadtest_pid],
            "worker": children(args.loadtest_pid),
        }
        # the SFU's media worker processes (rtc.workers > 1), each on its own
        for i, pid in enumerate(sorted(children(args.sfu_pid))):
            groups[f"sfu-worker{i}"] = [pid]
        process_cpu: dict[str, float] = {}
        rss: dict[str, int] = {}
        proc_now: dict[int, int] = {}
        for group, pids in groups.items():
            ticks = 0
            for pid in pids:
                reading = proc_cpu_rss(pid)
                if reading is None:
                    continue
                proc_now[pid] = reading[0]
                ticks += reading[0] - prev_proc.get(pid, reading[0])
                rss[group] = rss.get(group, 0) + reading[1] // (1 << 20)
            process_cpu[group] = round(100 * ticks / TICKS / wall, 1)
        sockets = udp_sockets()
        per_group: dict[str, dict[str, int]] = {}
        for group, pids in groups.items():
            inodes = set().union(*(socket_inodes(p) for p in pids)) if pids else set()
            mine = [sockets[i] for i in inodes if i in sockets]
            queue = sum(q for q, _ in mine)
            largest = max((q for q, _ in mine), default=0)
            max_queue[group] = max(max_queue.get(group, 0), largest)
            per_group[group] = {
                "sockets": len(mine),
                "rx_queue_bytes": queue,
                "max_rx_queue_bytes": largest,
                "drops": sum(d for _, d in mine),
            }
        samples.append(
            {
                "t": round(now - started),
                "cpu_pct_of_one_core": {
                    state: round(100 * (b - a) / TICKS / wall, 1)
                    for state, a, b in zip(CPU_STATES, prev_cpu, cpu, strict=True)
                },
                "process_cpu_pct": process_cpu,
                "rss_mb": rss,
                "udp_per_s": {
                    k: round((udp[k] - prev_udp[k]) / wall)
                    for k in ("InDatagrams", "OutDatagrams", "RcvbufErrors")
                },
                "udp_sockets": per_group,
            }
        )
        prev_cpu, prev_udp, prev_wall, prev_proc = cpu, udp, now, proc_now
    udp_end = udp_counters()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "note": f"samples every {args.interval:.0f} s; CPU in % of one core; "
                "written by benchmarks/machine_sampler.py",
                "udp_totals": {k: udp_end[k] - udp_start[k] for k in udp_end},
                "largest_rx_queue_bytes": max_queue,
                "samples": samples,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
