"""The media-quality call: one simulcast publisher, a subscriber behind a shaped link, one not.

`quality_call(workdir, shaped="sdk"|"browser")` starts everything a scenario needs and yields a
`QualityCall`:

- a namespace whose downlink from the SFU's one UDP port is shaped (tests/harness/shaper.py);
- the SFU (tests/harness/sfu.py) on that port, on loopback and the namespace's veth address;
- alice, a LiveKit Python SDK publisher in this process: the test pattern at 1280×720,
  `FPS` frames per second, VP8 simulcast (the SDK encodes 320×180, 640×360, 1280×720), and a
  440 Hz tone (`PooledPublisher`: frames rendered once and replayed, so the publisher's CPU
  goes to encoding, not to drawing);
- the shaped subscriber: the LiveKit Python SDK in its own process in the namespace
  (tests/harness/quality_subscriber.py) or livekit-client in Chromium in the namespace, its tile
  1280×720 with adaptive stream, as Element Call would show a speaker;
- the unshaped subscriber: the SDK in its own process on the host.

`run_scenarios(call)` then plays `SCENARIOS` on the link, one after another on the same call:
clean; capped at 600 kbit/s; capped at 300 kbit/s; cap lifted; 5 % random loss. Each is judged
on its own window (`Scenario.judge_after_s` leaves out the first seconds, when an estimator is
still allowed to react), and `ScenarioResult.problems` lists every bound of issue 16 it missed.
Every step is bounded; everything is stopped at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from livekit import rtc

from tests.harness.background import cancel_tasks
from tests.harness.browser import HarnessPage, browser_session
from tests.harness.pooled_publisher import PooledPublisher
from tests.harness.quality import Reception, WindowReport, add_page_samples, timeline_text
from tests.harness.quality_subscriber import SdkSubscriber
from tests.harness.sfu import SfuInstance, free_udp_port, free_udp_port_pair, running_sfu
from tests.harness.shaper import ShapedDownlink, sfu_config_for, shaped_namespace

PUBLISHER = "alice"
WIDTH, HEIGHT, FPS = 1280, 720, 24.0
MAX_BITRATE = 2_500_000  # the 720p layer's; the pattern's colour shifts make costly frames
PATTERN_CYCLE = 24  # frames rendered once, then replayed (the frame number repeats mod this)
TOP_HEIGHT, LOWEST_HEIGHT = 720, 180
JOIN_S = 30.0
WARM_UP_S = 25.0  # until both subscribers decode 720p
MIN_FPS = 20.0
#: on a loaded machine the publisher encodes, and an SDK subscriber decodes, fewer than MIN_FPS
#: frames per second whatever the SFU does: a frame-rate bound is then MIN_FPS or this share of
#: a reference measured in the same window, whichever is lower (the shaped subscriber's: what
#: the unshaped one got; the unshaped one's: what alice encoded at 720p), and the message says so
FPS_SHARE_OF_UNSHAPED = 0.9
FPS_SHARE_OF_ENCODED = 0.8
MAX_FREEZE_S = 1.0
MAX_AUDIO_CONCEALED = 0.05
RECOVER_S = 10.0
PAGE_SAMPLE_MS = 200

ShapedKind = Literal["sdk", "browser"]
QUALITY_LIMITATION = {0: "none", 1: "cpu", 2: "bandwidth", 3: "other"}  # the SDK's stats enum


class PageSubscriber:
    """livekit-client in a Chromium page; its sampled getStats counters fill `reception`."""

    def __init__(self, page: HarnessPage) -> None:
        self.name, self.page = f"{page.name} (shaped, Chromium)", page
        self.reception = Reception()
        self._task: asyncio.Task[None] | None = None

    async def start(self, url: str, token: str, publisher: str) -> None:
        await self.page.join(
            url, token, video=False, audio=False, video_css=(WIDTH, HEIGHT), timeout_s=JOIN_S + 15
        )
        await self.page.start_sampler(publisher, PAGE_SAMPLE_MS)
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.collect()

    async def collect(self) -> None:
        add_page_samples(self.reception, await self.page.take_samples())

    def check_alive(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_tasks([self._task], self.name)
        with contextlib.suppress(Exception):
            await self.collect()


Subscriber = SdkSubscriber | PageSubscriber


@dataclass
class QualityCall:
    sfu: SfuInstance
    link: ShapedDownlink
    publisher: PooledPublisher
    shaped: Subscriber
    unshaped: SdkSubscriber
    started: float = field(default_factory=time.monotonic)

    @property
    def subscribers(self) -> list[Subscriber]:
        return [self.shaped, self.unshaped]

    def check_alive(self) -> None:
        """Fail at once, saying which, when a component of the call is gone (the measurements
        after that would be about the harness, not the SFU)."""
        self.sfu.assert_alive()
        self.link.check_alive()
        self.publisher.check_tasks()
        if not self.publisher.room.isconnected():
            state = rtc.ConnectionState.Name(self.publisher.room.connection_state)
            raise AssertionError(f"the publisher {PUBLISHER} is no longer connected ({state})")
        for subscriber in self.subscribers:
            subscriber.check_alive()

    async def wait_for_top_layer(self, timeout_s: float = WARM_UP_S) -> None:
        """Until both subscribers decode 720p frames (the warm-up: joins, bandwidth ramp-up)."""
        since = time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if all(
                s.reception.first_frame(height=TOP_HEIGHT, since=since) for s in self.subscribers
            ):
                return
            await asyncio.sleep(0.5)
        seen = {
            s.name: s.reception.window(since, time.monotonic()).line() for s in self.subscribers
        }
        raise AssertionError(f"no 720p frames at both subscribers in {timeout_s} s: {seen}")


def quality_publisher() -> PooledPublisher:
    """Alice as every scenario has her: 720p VP8 simulcast from the pooled pattern, and a tone."""
    return PooledPublisher(
        PUBLISHER,
        pool=PATTERN_CYCLE,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        simulcast=True,
        max_bitrate=MAX_BITRATE,
    )


@contextlib.asynccontextmanager
async def quality_call(
    workdir: Path, shaped: ShapedKind, *, workers: int = 1
) -> AsyncIterator[QualityCall]:
    """The call (see the module doc); with `workers` > 1 the SFU runs that many media workers
    (`rtc.workers`), and all their UDP ports are shaped towards bob together."""
    if workers not in (1, 2):
        raise ValueError("the quality call runs with 1 or 2 media workers")
    room = f"quality-{uuid.uuid4().hex[:8]}"
    udp_port = free_udp_port() if workers == 1 else free_udp_port_pair()
    with shaped_namespace(udp_port, ports=workers) as link:
        extra = sfu_config_for([link.ns], udp_port)
        extra["rtc"]["workers"] = workers
        # running_sfu makes workdir/sfu and so workdir, where the logs below go
        async with running_sfu(workdir / "sfu", extra_config=extra) as sfu:
            shaped_url = f"ws://{link.ns.host_ip}:{sfu.port}"
            publisher = quality_publisher()
            unshaped = SdkSubscriber("carol (unshaped, SDK)", workdir / "carol.log")
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(publisher.leave)
                stack.push_async_callback(unshaped.stop)
                subscriber: Subscriber
                if shaped == "sdk":
                    subscriber = SdkSubscriber("bob (shaped, SDK)", workdir / "bob.log", link.ns)
                    stack.push_async_callback(subscriber.stop)
                    await subscriber.start(shaped_url, sfu.token("bob", room), PUBLISHER)
                else:
                    session = await stack.enter_async_context(
                        browser_session(
                            names=["bob"],
                            host=link.ns.host_ip,
                            executable=link.ns.chromium_wrapper(workdir),
                        )
                    )
                    subscriber = PageSubscriber(session.pages[0])
                    stack.push_async_callback(subscriber.stop)
                    await subscriber.start(shaped_url, sfu.token("bob", room), PUBLISHER)
                await unshaped.start(sfu.url, sfu.token("carol", room), PUBLISHER)
                await publisher.connect(sfu.url, sfu.token(PUBLISHER, room), timeout_s=JOIN_S)
                await publisher.publish(timeout_s=JOIN_S)
                call = QualityCall(sfu, link, publisher, subscriber, unshaped)
                yield call
                call.check_alive()


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    apply: Callable[[ShapedDownlink], object]
    seconds: float
    judge_after_s: float  # the window judged starts this long after the change
    #: the scenario ends this long after the shaped subscriber's first 720p frame in it (its
    #: bound is when that frame came; the rest of `seconds` would only wait)
    end_after_top_s: float | None = None


def _clean(link: ShapedDownlink) -> None:
    link.lift()
    link.set_loss(0.0)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("clean", _clean, 6.0, 1.0),
    Scenario("cap 600 kbit/s", lambda link: link.cap(600), 12.0, 5.0),
    Scenario("cap 300 kbit/s", lambda link: link.cap(300), 10.0, 5.0),
    Scenario("cap lifted", lambda link: link.lift(), RECOVER_S + 1.0, 0.0, end_after_top_s=1.0),
    Scenario("5 % loss", lambda link: link.set_loss(0.05), 8.0, 2.0),
)


def _delay_and_loss(link: ShapedDownlink) -> None:
    link.set_loss(0.02)
    link.set_delay(150.0)


#: issue 16's fifth measurement, not among its bounds (benchmarks/media_quality.py --delay);
#: only the unshaped subscriber is judged in it
DELAY_SCENARIO = Scenario("150 ms delay + 2 % loss", _delay_and_loss, 10.0, 2.0)


@dataclass
class ScenarioResult:
    scenario: Scenario
    started: float
    ended: float
    reports: dict[str, WindowReport]  # subscriber name → its judged window
    timelines: dict[str, list[int | None]]  # subscriber name → dominant height per second
    link_kbps: float  # what left the shaped class towards the namespace
    link_drops: int  # datagrams the rate cap's queue dropped
    shaped: str = ""  # the shaped subscriber's name
    #: what alice's encoder produced meanwhile: rid → (frames per second, quality limitation)
    encoded: dict[str, tuple[float, str]] = field(default_factory=dict)
    recovered_s: float | None = None  # "cap lifted": first 720p frame after the lift
    problems: list[str] = field(default_factory=list)


def _judge(result: ScenarioResult, shaped: str, unshaped: str) -> None:
    name, problems = result.scenario.name, result.problems
    s, u = result.reports[shaped], result.reports[unshaped]
    encoded = "alice encoded " + (
        ", ".join(f"{rid} {fps:.1f} fps ({why})" for rid, (fps, why) in result.encoded.items())
        or "(no stats)"
    )

    top_encoded = result.encoded.get("f", (0.0, ""))[0]

    def fps_low(report: WindowReport, share: float, reference: float, what: str) -> str:
        """Why `report`'s frame rate is below its bound ("" when it is not)."""
        bound = min(MIN_FPS, share * reference) if reference > 0 else MIN_FPS
        if report.fps >= bound:
            return ""
        if bound < MIN_FPS:
            return f"{report.fps:.1f} fps < {bound:.1f} ({share:.0%} of {what}'s {reference:.1f})"
        return f"{report.fps:.1f} fps < {MIN_FPS:.0f}"

    shaped_low = fps_low(s, FPS_SHARE_OF_UNSHAPED, u.fps, unshaped)
    unshaped_low = fps_low(u, FPS_SHARE_OF_ENCODED, top_encoded, "alice's 720p encoder")

    def audio_clean(who: str, report: WindowReport) -> None:
        concealed = report.audio_concealed_fraction
        if concealed is None or report.audio_samples == 0:
            problems.append(f"{name}: {who} received no audio")
        elif concealed > MAX_AUDIO_CONCEALED:
            problems.append(f"{name}: {who}'s audio {concealed:.1%} concealed")

    if name == "clean":
        if shaped_low or s.dominant_height != TOP_HEIGHT:
            problems.append(f"{name}: {shaped} {shaped_low} {s.line()}; {encoded}")
        audio_clean(shaped, s)
    elif name == "cap 600 kbit/s":
        if s.longest_gap_s > MAX_FREEZE_S:
            problems.append(f"{name}: {shaped} froze {s.longest_gap_s:.1f} s ({s.line()})")
        if s.top_height is not None and s.top_height >= TOP_HEIGHT:
            problems.append(f"{name}: {shaped} still gets {s.top_height}p ({s.line()})")
        audio_clean(shaped, s)
    elif name == "cap 300 kbit/s":
        paused = s.frames == 0
        lowest = s.frames > 0 and s.longest_gap_s <= MAX_FREEZE_S and set(s.heights) == {180}
        if not (paused or lowest):
            problems.append(f"{name}: {shaped} neither paused nor at 180p ({s.line()})")
        audio_clean(shaped, s)
    elif name == "cap lifted":
        if result.recovered_s is None or result.recovered_s > RECOVER_S:
            took = "never" if result.recovered_s is None else f"{result.recovered_s:.1f} s"
            problems.append(f"{name}: {shaped} back at 720p: {took} (bound {RECOVER_S:.0f} s)")
    elif name == "5 % loss" and shaped_low:
        problems.append(f"{name}: {shaped} {shaped_low} ({s.line()}; {encoded})")
    # the unshaped subscriber, in every scenario
    if unshaped_low or u.longest_gap_s > MAX_FREEZE_S or u.dominant_height != TOP_HEIGHT:
        problems.append(
            f"{name}: unshaped {unshaped} affected: {unshaped_low} {u.line()}; {encoded}"
        )
    audio_clean(unshaped, u)


async def encoder_counters(room: rtc.Room) -> dict[str, tuple[int, str]]:
    """rid → (framesEncoded, qualityLimitationReason) of the publisher's video layers."""
    try:
        stats = await asyncio.wait_for(room.get_rtc_stats(), 5.0)
    except Exception:
        return {}
    out: dict[str, tuple[int, str]] = {}
    for entry in stats.publisher_stats:
        if (
            entry.WhichOneof("stats") == "outbound_rtp"
            and entry.outbound_rtp.stream.kind == "video"
        ):
            o = entry.outbound_rtp.outbound
            reason = QUALITY_LIMITATION.get(o.quality_limitation_reason, "?")
            out[o.rid or "-"] = (o.frames_encoded, reason)
    return out


async def run_scenarios(
    call: QualityCall, scenarios: tuple[Scenario, ...] = SCENARIOS
) -> list[ScenarioResult]:
    """Play `scenarios` in order on the call's link; each is judged (see `_judge`)."""
    results: list[ScenarioResult] = []
    shaped, unshaped = call.shaped.name, call.unshaped.name
    for scenario in scenarios:
        before = call.link.class_stats()
        encoded_before = await encoder_counters(call.publisher.room)
        captured_before = call.publisher.frames_sent
        started = time.monotonic()
        scenario.apply(call.link)
        deadline = started + scenario.seconds
        while time.monotonic() < deadline:
            call.check_alive()
            if scenario.end_after_top_s is not None:
                top = call.shaped.reception.first_frame(height=TOP_HEIGHT, since=started)
                if top is not None:
                    deadline = min(deadline, top.at + scenario.end_after_top_s)
            await asyncio.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
        after = call.link.class_stats()
        encoded_after = await encoder_counters(call.publisher.room)
        encoded_after["captured"] = (call.publisher.frames_sent, "")
        encoded_before["captured"] = (captured_before, "")
        if isinstance(call.shaped, PageSubscriber):
            await call.shaped.collect()
        ended = time.monotonic()
        judged_from = started + scenario.judge_after_s
        result = ScenarioResult(
            scenario,
            started,
            ended,
            reports={s.name: s.reception.window(judged_from, ended) for s in call.subscribers},
            timelines={
                s.name: s.reception.layer_timeline(started, ended) for s in call.subscribers
            },
            link_kbps=(after["bytes"] - before["bytes"]) * 8 / (ended - started) / 1000,
            link_drops=max(after["drops"] - before["drops"], 0),
            shaped=shaped,
            encoded={
                rid: ((n - encoded_before.get(rid, (0, ""))[0]) / (ended - started), reason)
                for rid, (n, reason) in encoded_after.items()
            },
        )
        if scenario.name == "cap lifted":
            first = call.shaped.reception.first_frame(height=TOP_HEIGHT, since=started)
            result.recovered_s = None if first is None else first.at - started
        _judge(result, shaped, unshaped)
        results.append(result)
    return results


def _rid_order(rid: str) -> tuple[int, str]:
    order = ("captured", "q", "h", "f")
    return order.index(rid) if rid in order else len(order), rid


def results_table(results: list[ScenarioResult]) -> str:
    """A Markdown table: one row per scenario and subscriber (the shaped one first)."""
    rows = [
        "| scenario | subscriber | fps | longest freeze (s) | frames by height | video kbit/s "
        "| link kbit/s (drops) | audio concealed | NACK | PLI | layer each second "
        "| alice captured/encoded fps (q/h/f) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name, report in r.reports.items():
            shaped = name == r.shaped
            scenario = r.scenario.name
            if shaped and r.recovered_s is not None:
                scenario += f" (720p after {r.recovered_s:.1f} s)"
            cells = [
                scenario,
                name,
                f"{report.fps:.1f}",
                f"{report.longest_gap_s:.2f}",
                " ".join(f"{h}p:{n}" for h, n in sorted(report.heights.items())) or "—",
                "—" if report.video_kbps is None else f"{report.video_kbps:.0f}",
                f"{r.link_kbps:.0f} ({r.link_drops})" if shaped else "—",
                "—"
                if report.audio_concealed_fraction is None
                else f"{report.audio_concealed_fraction:.1%}",
                str(report.nacks),
                str(report.plis),
                timeline_text(r.timelines[name]),
                "/".join(f"{r.encoded[rid][0]:.0f}" for rid in sorted(r.encoded, key=_rid_order))
                or "—",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


async def play(workdir: Path, shaped: ShapedKind) -> list[str]:
    """A whole run for a test: the call, the warm-up, every scenario; prints the table and
    returns every bound missed."""
    async with quality_call(workdir, shaped) as call:
        await call.wait_for_top_layer()
        results = await run_scenarios(call)
    print(results_table(results))
    return [problem for result in results for problem in result.problems]
