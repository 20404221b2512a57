"""The history panel: timeline, progress chart, ETA and warnings computed from recorded snapshots."""

import itertools
import json
import re
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from django.template.loader import render_to_string
from django.utils import timezone, translation

from batches import chart as progress_chart
from batches import history, services
from batches.chart import Point, downsample
from batches.formatting import format_duration
from batches.history import batch_history
from batches.models import BatchSnapshot, payload_digest, record_batch
from tests.reference import EXAMPLES

pytestmark = pytest.mark.django_db

T0 = datetime.fromtimestamp(1711471533, UTC)  # created_at of the example batches: 2024-03-26 16:45:33 UTC


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def payload(status, *, batch_id="batch_history", total=0, completed=0, failed=0, expires_after_hours=24, **entered):
    """The example payload for `status` with our id, counts and `*_at` times given in minutes after T0."""
    data = json.loads((EXAMPLES / f"batch.{status}.json").read_text())
    data["id"] = batch_id
    data["created_at"] = int(T0.timestamp())
    data["expires_at"] = int((T0 + timedelta(hours=expires_after_hours)).timestamp())
    for name in services.TIMESTAMP_FIELDS[1:]:
        data[name] = None
    for name, minutes in entered.items():
        data[name] = int(at(minutes).timestamp())
    data["request_counts"] = {"total": total, "completed": completed, "failed": failed}
    return data


def record(status, minute, **kwargs):
    """Record an observation of `status` made `minute` minutes after T0."""
    return record_batch(services.ApiBatch.from_api(payload(status, **kwargs)), observed_at=at(minute))


def running(minute, completed, failed=0, *, total=1000, **kwargs):
    return record("in_progress", minute, total=total, completed=completed, failed=failed, in_progress_at=5, **kwargs)


def render(batch, now):
    return render_to_string("batches/_history.html", {"history": batch_history(batch, now=now)})


def text_of(html):
    """What a reader sees: tags dropped, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).replace("\xa0", " ").split())


# --- Timeline ---------------------------------------------------------------


def test_it_uses_the_first_observation_of_a_status_when_the_api_gives_no_time():
    record("validating", 1)
    batch = record("in_progress", 10, total=10)  # no in_progress_at in this payload
    phases = batch_history(batch, now=at(40)).phases

    assert [(p.status, p.entered_at, p.source) for p in phases] == [
        ("validating", T0, "api"),
        ("in_progress", at(10), "observed"),
    ]
    assert phases[0].duration == timedelta(minutes=10)
    assert not phases[0].is_current
    assert phases[1].duration == timedelta(minutes=30)
    assert phases[1].is_current


def test_it_prefers_the_api_timestamps_over_the_dashboards_observations():
    record("validating", 1)
    running(12, 0)
    running(60, 500)
    record("finalizing", 125, total=1000, completed=1000, in_progress_at=5, finalizing_at=118)
    batch = record("completed", 130, total=1000, completed=1000, in_progress_at=5, finalizing_at=118, completed_at=123)
    phases = batch_history(batch, now=at(600)).phases

    assert [(p.status, p.entered_at, p.source) for p in phases] == [
        ("validating", T0, "api"),
        ("in_progress", at(5), "api"),
        ("finalizing", at(118), "api"),
        ("completed", at(123), "api"),
    ]
    assert [p.duration for p in phases] == [timedelta(minutes=5), timedelta(minutes=113), timedelta(minutes=5), None]
    assert not any(p.is_current for p in phases)


def test_it_fills_in_states_it_never_saw_from_the_api_timestamps():
    batch = record(
        "cancelled", 300, total=100, completed=27, failed=1, in_progress_at=1, cancelling_at=60, cancelled_at=64
    )
    phases = batch_history(batch, now=at(400)).phases

    assert [p.status for p in phases] == ["validating", "in_progress", "cancelling", "cancelled"]
    assert {p.source for p in phases} == {"api"}
    assert phases[2].duration == timedelta(minutes=4)


def test_it_keeps_the_current_status_last_when_an_earlier_one_was_observed_late():
    running(10, 500)
    record("finalizing", 125, total=1000, completed=1000, in_progress_at=5)  # no finalizing_at in these payloads
    batch = record("completed", 130, total=1000, completed=1000, in_progress_at=5, completed_at=123)
    phases = batch_history(batch, now=at(200)).phases

    assert [p.status for p in phases] == ["validating", "in_progress", "finalizing", "completed"]
    assert phases[2].duration == timedelta(0)  # observed after the API's completion time: no honest duration


def test_it_renders_the_timeline_with_times_sources_and_durations():
    record("validating", 1)
    running(20, 100)
    batch = record("finalizing", 90, total=1000, completed=1000, in_progress_at=5)  # no finalizing_at
    text = text_of(render(batch, now=at(95)))

    # One duration style throughout (not Django's timesince next to format_duration), and plain sources.
    assert "validating 2024-03-26 16:45:33 (1 h 35 min ago) 5 min API timestamp" in text
    assert "in progress 2024-03-26 16:50:33 (1 h 30 min ago) 1 h 25 min API timestamp" in text
    assert "finalizing 2024-03-26 18:15:33 (5 min ago) 5 min so far first observed" in text
    assert "Source" in text and "Time from" not in text


# --- Chart ------------------------------------------------------------------


def test_it_draws_every_observation_in_an_accessible_chart():
    record("validating", 1)
    counts = [(10, 0), (20, 2), (35, 3), (60, 5), (90, 9)]
    for minute, (completed, failed) in enumerate(counts, start=10):
        batch = running(minute, completed, failed, total=100)
    chart = batch_history(batch, now=at(20)).chart
    html = render(batch, now=at(20))

    observed = [p for p in chart.points if p.source == "observed"]
    assert [(p.completed, p.failed) for p in observed] == [(0, 0), *counts]
    assert next(p.source for p in chart.points if p.status == "in_progress") == "api"  # in_progress_at, 0 done
    # created → seen validating → in_progress_at, all at 0; then the five running observations joined.
    assert chart.completed.line.count("L") == 2 + 4
    assert chart.completed.gaps.count("M") == 1  # in_progress_at → the first count seen: not observed
    assert chart.total == 100
    assert 'role="img"' in html
    assert '<title id="history-chart-title">' in html
    assert "90 of 100 requests completed and 9 failed." in html
    assert 'aria-labelledby="history-chart-title history-chart-desc"' in html
    table = html.split("<details", 1)[1]
    for completed, failed in counts:
        assert re.search(rf'<td class="num">{completed}</td>\s*<td class="num">{failed}</td>', table)
    assert "style=" not in html


def _segments(chart):
    """(from, to, known?) for each stretch between plotted points, as minutes after T0."""
    points = chart.points
    return [
        ((a.at - T0) / timedelta(minutes=1), (b.at - T0) / timedelta(minutes=1), progress_chart.is_known_between(a, b))
        for a, b in itertools.pairwise(points)
    ]


def _as_data(chart):
    return [((p.at - T0) / timedelta(minutes=1), p.completed, p.failed, p.source) for p in chart.points]


def test_it_draws_a_batch_first_seen_after_it_finished_from_the_api_timestamps_only():
    # "Long-form drafts": ran for about an hour, first seen by batchboard four days later.
    batch = record(
        "completed", 4 * 24 * 60, total=100, completed=97, failed=3, in_progress_at=2, finalizing_at=55, completed_at=61
    )
    chart = batch_history(batch, now=at(4 * 24 * 60 + 5)).chart

    assert _as_data(chart) == [
        (0, 0, 0, "api"),  # created
        (2, 0, 0, "api"),  # in progress: nothing processed before
        (55, 97, 3, "api"),  # finalizing: processing over, the final counts hold
        (61, 97, 3, "api"),  # completed
    ]
    assert _segments(chart) == [(0, 2, True), (2, 55, False), (55, 61, True)]
    assert chart.end == at(61)  # the axis ends at completed_at, not at the first observation or now
    assert chart.completed.gaps and chart.failed.gaps
    assert [marker.x for marker in chart.markers] == sorted(marker.x for marker in chart.markers)
    assert chart.markers[-1].x == chart.right  # completed_at sits at the right edge, not bunched at the left
    assert chart.markers[0].x > chart.left + 0.02 * (chart.right - chart.left)
    html = render(batch, now=at(4 * 24 * 60 + 5))
    assert 'class="chart-gap-completed"' in html
    assert "not observed" in html


def test_it_draws_a_batch_first_seen_while_running_with_a_gap_before_the_first_count():
    batch = running(30, 400, total=1000)
    running(31, 450, total=1000)
    batch = running(32, 500, total=1000)
    chart = batch_history(batch, now=at(33)).chart

    assert _as_data(chart) == [
        (0, 0, 0, "api"),
        (5, 0, 0, "api"),
        (30, 400, 0, "observed"),
        (31, 450, 0, "observed"),
        (32, 500, 0, "observed"),
    ]
    assert _segments(chart) == [(0, 5, True), (5, 30, False), (30, 31, True), (31, 32, True)]
    assert chart.end == batch.last_seen_at  # a running batch's axis ends when it was last confirmed
    assert chart.completed.line.startswith("M58.0,")
    assert chart.completed.gaps.count("M") == 1


def test_it_draws_a_batch_seen_throughout_as_known_from_start_to_end():
    record("validating", 1)
    running(5, 0, total=10)
    running(6, 4, total=10)
    running(7, 9, failed=1, total=10)
    record("finalizing", 8, total=10, completed=9, failed=1, in_progress_at=5, finalizing_at=8)
    batch = record("completed", 9, total=10, completed=9, failed=1, in_progress_at=5, finalizing_at=8, completed_at=9)
    chart = batch_history(batch, now=at(60)).chart

    assert all(known for _, _, known in _segments(chart)), _as_data(chart)
    assert not chart.has_gaps
    assert chart.end == at(9)
    assert _as_data(chart)[-1] == (9, 9, 1, "api")


def test_it_shows_the_slope_change_at_a_cancel_as_observed():
    running(10, 100, total=1000)
    record("cancelling", 20, total=1000, completed=300, in_progress_at=5, cancelling_at=19)
    record("cancelling", 25, total=1000, completed=320, in_progress_at=5, cancelling_at=19)
    batch = record("cancelled", 40, total=1000, completed=330, in_progress_at=5, cancelling_at=19, cancelled_at=30)
    chart = batch_history(batch, now=at(41)).chart

    assert _as_data(chart)[-3:] == [(20, 300, 0, "observed"), (25, 320, 0, "observed"), (30, 330, 0, "api")]
    assert _segments(chart)[-1] == (25, 30, False)  # the last in-flight requests finished unobserved
    assert chart.end == at(30)
    assert any(marker.label.startswith("cancelling from") for marker in chart.markers)


def test_it_draws_no_chart_before_there_are_requests_to_count():
    batch = record("validating", 1)
    result = batch_history(batch, now=at(3))

    assert result.chart is None
    assert "<svg" not in render(batch, now=at(3))


def test_it_keeps_svg_coordinates_numeric_in_every_language():
    record("validating", 1)
    running(10, 1, total=3)
    batch = running(11, 2, total=3)
    with translation.override("de"):  # German writes 12,5 for 12.5
        html = render(batch, now=at(12))

    numbers = re.findall(r'(?:x1|y1|cx|cy)="([^"]*)"', html)
    assert any("." in n for n in numbers)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", n) for n in numbers)


def test_it_thins_long_histories_to_a_bounded_number_of_points():
    points = [Point(at(i / 10), "in_progress", 10_000, i, 0, "observed") for i in range(5000)]
    kept = downsample(points, 200)

    assert len(kept) <= 200
    assert kept[0] == points[0]
    assert kept[-1] == points[-1]
    assert [p.at for p in kept] == sorted(p.at for p in kept)
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(kept)]
    assert max(gaps) < 3 * (points[-1].at - points[0].at).total_seconds() / 200  # spread over the whole span


def test_it_says_when_the_chart_shows_fewer_points_than_were_observed():
    batch = record("validating", 1)
    BatchSnapshot.objects.bulk_create(_running_snapshots(batch, 600))
    result = batch_history(batch, now=at(700))

    assert result.observation_count == 601
    assert len(result.chart.points) <= progress_chart.MAX_CHART_POINTS
    assert result.chart.is_downsampled
    assert re.search(r"Data points \(\d+ of 60\d, thinned out evenly over time\)", render(batch, now=at(700)))


def test_it_counts_the_data_points_it_shows_without_calling_them_observations():
    """A batch first seen final has one observation but four points from the API's timestamps: not "4 of 1"."""
    batch = record(
        "completed", 90, total=10, completed=9, failed=1, in_progress_at=5, finalizing_at=50, completed_at=60
    )
    result = batch_history(batch, now=at(700))
    assert result.observation_count == 1
    assert not result.chart.is_downsampled
    html = render(batch, now=at(700))
    assert f"Data points ({len(result.chart.points)})" in html and "observations" not in html


def test_the_data_table_shows_each_point_in_the_viewers_zone_with_grouped_counts():
    running(10, 1200, 34, total=5000)
    batch = running(20, 2500, 40, total=5000)

    with timezone.override(zoneinfo.ZoneInfo("Europe/Paris")):  # UTC+1 in March 2024
        html = render(batch, now=at(30))

    row = re.search(r'<tr><td class="nowrap"><time datetime="2024-03-26T18:05:33\+01:00">.*?</tr>', html).group(0)
    assert text_of(row) == "2024-03-26 18:05:33 in progress 2,500 40 5,000 observed"
    assert "API timestamp" in text_of(html.split('id="history-data"')[1])  # in_progress_at, from the API


# --- ETA --------------------------------------------------------------------


def test_it_estimates_the_finish_from_the_recent_rate():
    record("validating", 1)
    running(10, 100)
    batch = running(40, 400)  # 300 requests in 30 minutes
    result = batch_history(batch, now=at(41))

    estimate = result.estimate
    assert estimate.basis == "observed"
    assert estimate.rate_per_hour == pytest.approx(600)
    assert estimate.remaining == 600
    assert estimate.finishes_at == at(100)
    assert not estimate.expires_first
    assert result.warnings == ()
    text = text_of(render(batch, now=at(41)))
    assert "At this rate (10 requests/min) the remaining 600 requests finish around 18:25 (in 59 min)." in text


def test_it_uses_the_pace_of_the_last_half_hour_not_the_average():
    running(10, 10)
    running(70, 70)  # 1 a minute for an hour...
    batch = running(100, 370)  # ...then 10 a minute
    estimate = batch_history(batch, now=at(100)).estimate

    assert estimate.rate_per_hour == pytest.approx(600)


def test_it_slows_the_estimate_when_no_progress_was_seen_since_the_last_snapshot():
    running(10, 100)
    batch = running(40, 400)
    record_batch(batch.api, observed_at=at(55))  # the same state, still current 15 minutes later
    batch.refresh_from_db()

    assert batch_history(batch, now=at(55)).estimate.rate_per_hour == pytest.approx(400)  # 300 in 45 minutes


def test_it_gives_no_estimate_when_nothing_was_processed_for_the_whole_window():
    running(10, 100)
    batch = running(40, 400)
    record_batch(batch.api, observed_at=at(75))  # unchanged for 35 minutes
    batch.refresh_from_db()
    result = batch_history(batch, now=at(75))

    assert result.estimate is None
    assert "No requests were processed in the last 30 min" in result.progress_note


def test_it_falls_back_to_the_average_since_in_progress_at():
    batch = running(35, 300)  # first seen already running: 300 done in the 30 minutes since in_progress_at
    estimate = batch_history(batch, now=at(35)).estimate

    assert estimate.basis == "api"
    assert estimate.rate_per_hour == pytest.approx(600)
    assert "the average since processing started" in render(batch, now=at(35))


def test_it_warns_when_the_batch_will_not_finish_before_it_expires():
    running(10, 100, total=100_000)
    batch = running(40, 400, total=100_000)
    result = batch_history(batch, now=at(40))

    assert result.estimate.expires_first
    # 600 an hour for the 23 h 20 min left: 14,000 more, so 99,600 - 14,000 stay unprocessed.
    assert result.estimate.unprocessed_at_expiry == 85_600
    assert [w.kind for w in result.warnings] == ["expires_first"]
    html = render(batch, now=at(40))
    assert "will not finish before it expires at Mar 27 16:45" in html
    assert "about 85,600 requests would be left unprocessed" in html


def test_it_says_there_is_no_estimate_without_progress():
    record("validating", 1)
    batch = running(10, 0)
    result = batch_history(batch, now=at(30))

    assert result.estimate is None
    assert "no request has been processed" in result.progress_note
    assert "no request has been processed" in render(batch, now=at(30))


def test_it_says_a_validating_batch_has_not_started():
    batch = record("validating", 1)
    result = batch_history(batch, now=at(5))

    assert result.estimate is None
    assert "still being validated" in result.progress_note


@pytest.mark.parametrize("status", ["completed", "expired", "cancelled", "failed"])
def test_it_gives_no_estimate_or_warning_for_a_finished_batch(status):
    times = {"completed_at": 60, "expired_at": 60, "cancelled_at": 60, "failed_at": 60}
    entered = {f"{status}_at": times[f"{status}_at"]}
    running(10, 10, total=100, expires_after_hours=1)
    batch = record(status, 2000, total=100, completed=20, in_progress_at=5, expires_after_hours=1, **entered)
    result = batch_history(batch, now=at(3000))

    assert result.is_terminal
    assert result.estimate is None
    assert result.progress_note == ""
    assert result.warnings == ()
    assert "At this rate" not in render(batch, now=at(3000))


# --- Stuck and overdue warnings ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "entered", "limit"),
    [
        ("validating", {}, history.VALIDATING_STUCK_AFTER),
        ("finalizing", {"in_progress_at": 1, "finalizing_at": 5}, history.FINALIZING_STUCK_AFTER),
        ("cancelling", {"in_progress_at": 1, "cancelling_at": 5}, history.CANCELLING_STUCK_AFTER),
    ],
)
def test_it_warns_when_a_batch_sits_too_long_in_a_passing_state(status, entered, limit):
    batch = record(status, 5, total=10, **entered)
    since = at(5) if entered else T0

    assert batch_history(batch, now=since + limit - timedelta(minutes=1)).warnings == ()
    result = batch_history(batch, now=since + limit + timedelta(minutes=1))
    assert [w.kind for w in result.warnings] == ["stuck"]
    assert f"has been {status} for {format_duration(limit + timedelta(minutes=1))}" in result.warnings[0].message


def test_it_warns_when_the_expiry_time_has_passed_but_the_batch_is_still_running():
    batch = running(10, 10, expires_after_hours=1)
    result = batch_history(batch, now=at(70))

    assert [w.kind for w in result.warnings] == ["overdue"]
    assert "window ended at 17:45" in render(batch, now=at(70))


# --- Rendering and queries --------------------------------------------------


def test_it_escapes_whatever_the_api_sends():
    data = payload("in_progress", total=10, completed=1, in_progress_at=5)
    data["status"] = "<b>odd</b>"
    batch = record_batch(services.ApiBatch.from_api(data), observed_at=at(10))
    html = render(batch, now=at(11))

    assert "<b>" not in html
    assert "unknown" in html  # a status batchboard does not know (the detail page shows the text, escaped)


def test_it_copes_with_a_batch_whose_snapshots_are_gone():
    batch = running(30, 300)
    batch.snapshots.all().delete()
    result = batch_history(batch, now=at(31))

    assert [p.status for p in result.phases] == ["validating", "in_progress"]
    assert result.estimate.basis == "api"
    assert "<svg" in render(batch, now=at(31))


def test_it_renders_nothing_without_a_history():
    assert render_to_string("batches/_history.html", {"history": None}).strip() == ""


@pytest.mark.parametrize("count", [5, 500])
def test_it_reads_the_history_in_one_query_however_long_it_is(count, django_assert_num_queries):
    batch = record("validating", 1)
    BatchSnapshot.objects.bulk_create(_running_snapshots(batch, count - 1))

    with django_assert_num_queries(1):
        result = batch_history(batch, now=at(count + 10))
        render_to_string("batches/_history.html", {"history": result})
    assert result.observation_count == count


def _running_snapshots(batch, count):
    snapshots = []
    for i in range(count):
        data = payload("in_progress", total=count, completed=i, in_progress_at=5)
        snapshots.append(
            BatchSnapshot(
                batch=batch,
                observed_at=at(6 + i),
                status="in_progress",
                total_requests=count,
                completed_requests=i,
                payload=data,
                payload_hash=payload_digest(data),
            )
        )
    return snapshots


# --- Words ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0, "0 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"), (3660, "1 h 1 min"), (90000, "1 d 1 h")],
)
def test_it_words_durations_briefly(seconds, words):
    assert format_duration(timedelta(seconds=seconds)) == words
