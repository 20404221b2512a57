"""The local cache: the latest known state of each batch and every distinct state ever observed."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    models,
    transaction,
)
from django.db.models import Case, Exists, F, FloatField, OuterRef, Q, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Lower
from django.db.models.lookups import GreaterThan, In
from django.http import QueryDict
from django.urls import Resolver404, resolve
from django.utils import timezone

from batches import events, normalise, pricing, services
from batches.history import STUCK_AFTER
from batches.lineage_keys import LineageState, claim_of, part_claim_of

logger = logging.getLogger("batches.recording")

STATUS_CHOICES = [(s, services.status_label(s)) for s in services.RECORDED_STATUSES]
# The list's pseudo-statuses: "every batch that can still change", and "every batch someone should look at".
ACTIVE_FILTER = "active"
ATTENTION_FILTER = "attention"
# Every batch with at least one failed request, whatever its share ("needs attention" asks for a share).
FAILED_LINES_FILTER = "failed-lines"
# The list's orders (a leading "-" reverses): the URL's `sort`.
SORTS = ("-created", "created", "status", "-status", "progress", "-progress", "expires", "-expires")
DEFAULT_SORT = "-created"
# A cancel claim older than this is from a request that died before calling the API; it may be claimed again.
CANCEL_CLAIM_SECONDS = 300
METADATA_SUMMARY_LENGTH = 80
# The metadata key shown as a batch's description (the create form's Description field writes it).
DESCRIPTION_KEY = "description"


NEWEST_FIRST = ("-created_at", "-batch_id")
FILE_ID_FIELDS = ("input_file_id", "output_file_id", "error_file_id")
REQUEST_COUNT_FIELDS = ("total_requests", "completed_requests", "failed_requests")
TOKEN_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens")


def payload_digest(payload: dict) -> str:
    """Identifies a state: equal digests are the same observation, so they add no snapshot.

    The API sends "" or null for a missing file id, both meaning none; they must not look like a change of state.
    """
    normalised = {**payload, **{name: payload.get(name) or None for name in FILE_ID_FIELDS if name in payload}}
    return hashlib.sha256(json.dumps(normalised, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def progress_key(batch: services.ApiBatch) -> tuple[int, int, int]:
    """Orders observations of one batch: timestamps are only ever added, counts and token usage only grow.

    A late answer (an older state) sorts below the stored one and is ignored; equal keys mean neither is older.
    """
    timestamps_set = sum(1 for name in services.TIMESTAMP_FIELDS if getattr(batch, name))
    tokens = batch.usage.total_tokens if batch.usage else 0
    return (timestamps_set, batch.request_counts.processed, tokens)


def status_badge(status: str, completed: int, failed: int, total: int) -> tuple[str, str]:
    label = services.status_label(status)
    if status == "completed" and failed:
        if not completed:
            return "completed-all-failed", "completed · all failed"
        return "completed-with-failures", f"completed · {failed:,} failed"
    if status == "completed" and total == 0:
        return "completed-with-failures", "completed · empty"
    return status, label


USERNAME_LENGTH = 150  # Django's username field: who cancelled or created is recorded at that width.


def stored_username(name: str) -> str:
    """A user name cut to the width of the columns that record who did something."""
    return name[:USERNAME_LENGTH]


FAILED_STATUSES = ("failed", "expired")
# Statuses in which a batch still runs against its completion window, so it can expire.
RUNNING_STATUSES = ("validating", "in_progress", "finalizing")


def _stuck(now: datetime) -> Q:
    """In a status past its STUCK_AFTER (never a failed one): see BatchQuerySet.needs_attention."""
    stuck = Q()
    for status, limit in STUCK_AFTER.items():
        since = "created_at" if status == "validating" else "last_changed_at"
        stuck |= Q(status=status, **{f"{since}__lt": now - limit})
    return stuck


def _failure_share_high() -> Q:
    """More than BATCHBOARD_ATTENTION_FAILURE_PERCENT of the requests failed (compared in integers, per mille)."""
    per_mille = round(settings.BATCHBOARD_ATTENTION_FAILURE_PERCENT * 10)
    return Q(failed_requests__gt=0) & Q(GreaterThan(F("failed_requests") * 1000, F("total_requests") * per_mille))


def _finished_figures() -> dict:
    """The summary's aggregates of batches finished since a moment (BatchQuerySet.finished_since)."""
    return {
        "finished_today": models.Count("id"),
        "failed_today": models.Count("id", filter=Q(status__in=FAILED_STATUSES)),
        "failed_requests_today": Coalesce(models.Sum("failed_requests"), 0),
    }


def _needs_attention(now: datetime) -> Q:
    """See BatchQuerySet.needs_attention."""
    return Q(status__in=FAILED_STATUSES) | _needs_attention_while_running(now)


def _needs_attention_while_running(now: datetime) -> Q:
    """needs_attention() without its failed and expired statuses, which are final: what a running batch can meet."""
    return _failure_share_high() | _stuck(now) | _expiring_soon(now)


def _expiring_soon(now: datetime) -> Q:
    """Still running with less than BATCHBOARD_EXPIRING_SOON_HOURS of its completion window left."""
    soon = now + timedelta(hours=settings.BATCHBOARD_EXPIRING_SOON_HOURS)
    return Q(is_terminal=False, status__in=RUNNING_STATUSES, expires_at__isnull=False, expires_at__lt=soon)


class BatchQuerySet(models.QuerySet):
    def active(self):
        return self.filter(is_terminal=False)

    def in_connections(self, connection_ids: Iterable[int]):
        """The batches of these connections, for a viewer who may not see every one.

        On SQLite the test is on `connection_id + 0`, which no index can seek. SQLite keeps no statistics (Django
        never runs ANALYZE), so given a usable `connection_id IN (...)` it seeks the connection index and then sorts
        every row of those connections for the page and reads each for the counts: 100-400 ms at 100,000 batches
        for a viewer of 3 or 10 of 10 connections (`python -m benchmarks.connections`). Without it the queries take
        the plans they take for a viewer of everything (newest-first index, the counts' narrow indexes) and check
        the connection on the rows they visit. PostgreSQL plans from statistics and keeps the plain test.
        """
        connection_ids = list(connection_ids)
        if connection.vendor != "sqlite":
            return self.filter(connection__in=connection_ids)
        return self.filter(In(F("connection_id") + 0, connection_ids))

    def mark_seen(self, batch_ids, observed_at: datetime) -> int:
        """Note that the API still showed these batches, unchanged, at `observed_at` (never moving it backwards)."""
        return self.filter(batch_id__in=batch_ids, last_seen_at__lt=observed_at).update(last_seen_at=observed_at)

    def claim_refresh(self, batch_id: str, now: datetime, seconds: float) -> bool:
        """Take the right to refresh one batch from the API: True for one caller per `seconds`, in any process.

        A conditional UPDATE, so a crowd of viewers of one running batch costs one retrieve per interval.
        """
        cutoff = now - timedelta(seconds=seconds)
        unclaimed = models.Q(refresh_claimed_at__isnull=True) | models.Q(refresh_claimed_at__lte=cutoff)
        return bool(self.filter(unclaimed, batch_id=batch_id).update(refresh_claimed_at=now))

    def claim_cancel(self, pk: int, user: str, now: datetime) -> bool:
        """Take the right to send the one upstream cancel of a batch; a claim older than CANCEL_CLAIM_SECONDS is
        from a request that died before reaching the API and may be taken again."""
        unclaimed = models.Q(cancel_requested_at__isnull=True) | models.Q(
            cancel_requested_at__lt=now - timedelta(seconds=CANCEL_CLAIM_SECONDS)
        )
        claimable = self.filter(unclaimed, pk=pk, status__in=services.CANCELLABLE_STATUSES)
        return bool(claimable.update(cancel_requested_at=now, cancel_requested_by=stored_username(user)))

    def release_cancel(self, pk: int, claimed_at: datetime) -> None:
        """Give back a cancel claim after a failed call: only our own (a slow call may have been claimed over)."""
        self.filter(pk=pk, cancel_requested_at=claimed_at).update(cancel_requested_at=None, cancel_requested_by="")

    def finished(self):
        return self.filter(is_terminal=True)

    def newest_first(self):
        return self.order_by(*NEWEST_FIRST)

    def with_status(self, status: str):
        """Batches in `status`; "active" means any status that can still change, "attention" needs_attention(),
        "failed-lines" any batch with a failed request."""
        if status == ACTIVE_FILTER:
            return self.active()
        if status == ATTENTION_FILTER:
            return self.needs_attention()
        if status == FAILED_LINES_FILTER:
            return self.with_failed_lines()
        return self.filter(status=status) if status else self

    def with_failed_lines(self):
        return self.filter(failed_requests__gt=0)

    def needs_attention(self, now: datetime | None = None):
        """Batches someone should look at: failed or expired; more than BATCHBOARD_ATTENTION_FAILURE_PERCENT of their
        requests failed; stuck (in validating, finalizing or cancelling for longer than the history's STUCK_AFTER,
        measured from creation for validating and from the last observed change for the others: the list has no
        per-status entry time); or running with less than BATCHBOARD_EXPIRING_SOON_HOURS of their window left.
        One failed line among thousands is not news: the "failed-lines" filter lists those."""
        return self.filter(_needs_attention(now or timezone.now()))

    def stuck(self, now: datetime | None = None):
        """Batches in validating, finalizing or cancelling for longer than the history's STUCK_AFTER (as
        needs_attention() measures it)."""
        return self.filter(_stuck(now or timezone.now()))

    def expiring_soon(self, now: datetime | None = None):
        """Running batches with less than BATCHBOARD_EXPIRING_SOON_HOURS of their window left."""
        return self.filter(_expiring_soon(now or timezone.now()))

    def needs_attention_count(self, status_counts: dict[str, int], now: datetime | None = None) -> int:
        """needs_attention().count(), given these batches' status_counts(): the failed and expired from the counts,
        then three disjoint counts that each seek an index instead of scanning every batch (tens of milliseconds at
        100,000): a high failure share (batch_attention: batches with a failed request), stuck ones without one
        (batch_attention by status), and those expiring soon that are neither (batch_expiry)."""
        now = now or timezone.now()
        others = [status for status in services.LIFECYCLE if status not in FAILED_STATUSES]
        share = self.filter(_failure_share_high(), status__in=others).count()
        stuck = self.filter(_stuck(now)).exclude(_failure_share_high()).count()
        expiring = self.filter(_expiring_soon(now)).exclude(_stuck(now) | _failure_share_high()).count()
        return sum(status_counts.get(status, 0) for status in FAILED_STATUSES) + share + stuck + expiring

    def search(self, text: str):
        """Batches whose id, file ids or metadata contain every word of `text` (case-insensitive); a `key:value`
        word matches batches whose metadata `key` is `value` (case-insensitive)."""
        queryset = self
        for number, word in enumerate(text.split()):
            key, separator, value = word.partition(":")
            # The plain containment test first, on the narrow column; the exact pair only for the rows it keeps.
            queryset = queryset.filter(search_text__contains=word.lower() if not (key and value) else value.lower())
            if separator and key and value:
                alias = f"metadata_term_{number}"
                queryset = queryset.alias(**{alias: Lower(KeyTextTransform(key, "metadata"))})
                queryset = queryset.filter(**{alias: value.lower()})
        return queryset

    def created_between(self, start: datetime | None, end: datetime | None):
        """Created at or after `start` and before `end` (either may be None)."""
        queryset = self.filter(created_at__gte=start) if start else self
        return queryset.filter(created_at__lt=end) if end else queryset

    def sorted_by(self, sort: str):
        """In one of the list's SORTS; newest first breaks ties (and is the default)."""
        field, descending = sort.removeprefix("-"), sort.startswith("-")
        if field == "status":
            key = Case(
                *(When(status=status, then=Value(rank)) for rank, status in enumerate(services.LIFECYCLE)),
                default=Value(len(services.LIFECYCLE)),
            )
        elif field == "progress":
            processed = Cast(F("completed_requests") + F("failed_requests"), FloatField())
            key = Case(When(total_requests=0, then=Value(0.0)), default=processed / F("total_requests"))
        elif field == "expires":
            key = Case(When(is_terminal=True, then=None), default=F("expires_at"))  # only running batches expire
        elif field == "created" and not descending:
            return self.order_by("created_at", "batch_id")
        else:
            return self.newest_first()
        return self.order_by(key.desc(nulls_last=True) if descending else key.asc(nulls_last=True), *NEWEST_FIRST)

    def matching(
        self,
        *,
        connection_id: int | None = None,
        endpoint: str = "",
        model: str = "",
        q: str = "",
        created_range=(None, None),
        originals: bool = False,
        job: str = "",
    ):
        """The list's filters other than status, which the status counts are computed over. `originals` leaves
        verified retries out; `job` keeps one job: its original batch and every verified retry of it;
        `connection_id` keeps one connection's batches."""
        queryset = self.search(q).created_between(*created_range)
        if connection_id is not None:
            queryset = queryset.filter(connection_id=connection_id)
        if endpoint:
            queryset = queryset.filter(endpoint=endpoint)
        if model:
            queryset = queryset.filter(model=model)
        if originals:
            queryset = queryset.exclude(lineage_state=LineageState.VERIFIED)
        if job:
            queryset = queryset.in_job(job, connection_id)
        return queryset

    def in_job(self, job_id: str, connection_id: int | None = None):
        """The job's batches: its original and the retries verified to resend its lines (a claim alone is not
        enough: any creator can write the metadata). A job lives in one connection: `connection_id` names it."""
        queryset = self.filter(connection_id=connection_id) if connection_id is not None else self
        return queryset.filter(models.Q(batch_id=job_id) | models.Q(job=job_id, lineage_state=LineageState.VERIFIED))

    def parts_of(self, first_id: str, connection_id: int) -> list:
        """The parts of the split job whose first part is `first_id`, in order (one query); [] when that batch is no
        first part. Metadata is anyone's to write, so the job is the first part and, for each later number up to its
        count, the first batch made (by created_at, then id) that claims that number of that count: a second or
        stray claim never joins it. The same rule on any install that imports the same batches gives the same job."""
        candidates = self.filter(connection_id=connection_id, part_of=first_id).select_related("connection")
        candidates = candidates.order_by("created_at", "batch_id")
        by_number: dict[int, Batch] = {}
        for batch in candidates:
            by_number.setdefault(batch.part, batch)
        first = by_number.get(1)
        if first is None or first.batch_id != first_id:
            return []
        return [first] + [
            batch
            for number in range(2, first.parts + 1)
            if (batch := by_number.get(number)) is not None and batch.parts == first.parts
        ]

    def retry_counts(self, job_ids: list[str]) -> dict[str, int]:
        """{job id: its verified retries} for these jobs, in one query (the list's "↻ 3 retries")."""
        rows = self.filter(job__in=job_ids, lineage_state=LineageState.VERIFIED).order_by().values_list("job")
        return dict(rows.annotate(count=models.Count("pk")))

    def count_retries(self, batches: list) -> None:
        """Set `retry_count` on each of a list page's batches: how many verified retries its job has, in one query.
        A job lives in one connection: the retries of a same-named job of another connection are not its own."""
        rows = (
            self.filter(job__in=[batch.batch_id for batch in batches], lineage_state=LineageState.VERIFIED)
            .order_by()
            .values_list("connection_id", "job")
            .annotate(count=models.Count("pk"))
        )
        counts = {(connection_id, job): count for connection_id, job, count in rows}
        for batch in batches:
            batch.retry_count = counts.get((batch.connection_id, batch.batch_id), 0)

    def status_counts(self) -> dict[str, int]:
        """{status: number of batches}, in one aggregate query."""
        rows = self.order_by().values_list("status").annotate(count=models.Count("id"))
        return dict(rows)

    def endpoints_and_models(self) -> tuple[list[str], list[str]]:
        """The distinct endpoints and models seen, for the filter menus, in one query."""
        pairs = self.order_by().values_list("endpoint", "model").distinct()
        endpoints, model_names = set(), set()
        for endpoint, model in pairs:
            endpoints.add(endpoint)
            model_names.add(model)
        return sorted(e for e in endpoints if e), sorted(m for m in model_names if m)

    def running_figures(self, now: datetime | None = None) -> dict[str, dict[str, int]]:
        """Per status of these batches that are not final: {"count", "failed_lines" (batches with a failed request),
        "attention" (as needs_attention(), clock included), "in_flight" (requests not yet processed)}, in one grouped
        query over the running batches only (about 1 % of them): what moves between two polls."""
        return {row.pop("status"): row for row in self._running_aggregates(now, "status")}

    def running_figures_per_connection(self, now: datetime | None = None) -> dict[int, dict[str, dict[str, int]]]:
        """running_figures() per connection: {connection id: {status: figures}}, in one grouped query (over the same
        index: it ends with the connection). What batches.list_figures keeps for every viewer's scope."""
        per_connection: dict[int, dict[str, dict[str, int]]] = {}
        for row in self._running_aggregates(now, "connection", "status"):
            per_connection.setdefault(row.pop("connection"), {})[row.pop("status")] = row
        return per_connection

    def _running_aggregates(self, now: datetime | None, *grouped_by: str):
        now = now or timezone.now()
        unfinished = models.F("total_requests") - models.F("completed_requests") - models.F("failed_requests")
        return (
            self.active()
            .order_by()
            .values(*grouped_by)
            .annotate(
                count=models.Count("id"),
                failed_lines=models.Count("id", filter=Q(failed_requests__gt=0)),
                attention=models.Count("id", filter=_needs_attention_while_running(now)),
                in_flight=Coalesce(models.Sum(unfinished), 0),
            )
        )

    def settled_figures(self) -> dict[str, dict[str, int]]:
        """Per final status of these batches: {"count", "failed_lines", "attention"}, as running_figures() counts
        them (a final batch needs attention when it failed or expired, or when its failure share is high; it is never
        stuck or expiring, so the clock does not move these). Two grouped queries over narrow indexes: the status
        counts, and batch_failed_lines for the batches with a failed request."""
        return {status: figures for (status,), figures in self._settled_groups("status").items()}

    def settled_figures_per_connection(self) -> dict[int, dict[str, dict[str, int]]]:
        """settled_figures() per connection: {connection id: {status: figures}}, over the narrow indexes
        batch_status_connection and batch_failed_lines. What batches.list_figures keeps for every viewer's scope."""
        per_connection: dict[int, dict[str, dict[str, int]]] = {}
        for (connection_id, status), figures in self._settled_groups("connection", "status").items():
            per_connection.setdefault(connection_id, {})[status] = figures
        return per_connection

    def _settled_groups(self, *grouped_by: str) -> dict[tuple, dict[str, int]]:
        final = self.filter(status__in=services.TERMINAL_STATUSES).order_by()
        figures = {}
        for *group, count in final.values_list(*grouped_by).annotate(count=models.Count("id")):
            status = group[-1]
            figures[tuple(group)] = {
                "count": count,
                "failed_lines": 0,
                "attention": count if status in FAILED_STATUSES else 0,
            }
        rows = (
            final.with_failed_lines()
            .values_list(*grouped_by)
            .annotate(lines=models.Count("id"), share_high=models.Count("id", filter=_failure_share_high()))
        )
        for *group, lines, share_high in rows:
            entry = figures[tuple(group)]
            entry["failed_lines"] = lines
            if group[-1] not in FAILED_STATUSES:
                entry["attention"] = share_high
        return figures

    def finished_since(self, since: datetime) -> dict[str, int]:
        """The summary's figures of the batches finished since `since`, in one aggregate over the batch_summary
        index: how many, how many failed or expired, and their failed requests."""
        return self._finished(since).aggregate(**_finished_figures())

    def finished_since_per_connection(self, since: datetime) -> dict[int, dict[str, int]]:
        """finished_since() per connection: {connection id: figures}, for the connections with such a batch."""
        rows = self._finished(since).values("connection").annotate(**_finished_figures())
        return {row.pop("connection"): row for row in rows}

    def _finished(self, since: datetime):
        return self.order_by().filter(is_terminal=True, finished_at__gte=since)

    def summary(self, since: datetime) -> dict[str, int]:
        """The list page's summary figures (see the template for their definitions)."""
        return summary_of(self.running_figures(), self.finished_since(since))

    def cost_total(self) -> pricing.CostTotal:
        """What these batches cost: one aggregate grouped by model, priced in Python (a handful of rows)."""
        rows = (
            self.order_by()
            .filter(input_tokens__isnull=False)
            .values("model")
            .annotate(batches=models.Count("id"), **{name: models.Sum(name) for name in TOKEN_FIELDS})
        )
        return pricing.CostTotal.of(rows)


def summary_of(running: dict[str, dict[str, int]], finished: dict[str, int]) -> dict[str, int]:
    """The list page's summary figures from running_figures() and finished_since() of the same batches."""
    figures = {
        "running": sum(status["count"] for status in running.values()),
        "requests_in_flight": max(sum(status["in_flight"] for status in running.values()), 0),
    }
    return {**figures, **finished}


# Raw SQL: the ORM has no query without a FROM row. The last part is `WHERE is_terminal`, not `= true`: SQLite then
# walks batch_changed from its newest end and stops at the first final batch (a few rows), where `is_terminal = 1`
# seeks batch_expiry and sorts every final batch (60 ms at 100,000).
DATA_VERSION_SQL = (
    "SELECT (SELECT MAX(last_changed_at) FROM batches_batch), (SELECT MAX(id) FROM batches_batch), "
    "(SELECT MAX(cancel_requested_at) FROM batches_batch), "
    "(SELECT COUNT(*) FROM batches_batch WHERE cancel_requested_at IS NOT NULL), "
    "(SELECT last_changed_at FROM batches_batch WHERE is_terminal ORDER BY last_changed_at DESC LIMIT 1)"
)


def data_version() -> tuple:
    """A value that changes whenever what the list shows can change, other than with the clock: a batch recorded
    (record_batch moves last_changed_at), a batch added (a new id, even when a racing writer's older observation
    does not move last_changed_at), a cancel claimed or released. Batches are never deleted (the admin is read-only).

    One query of five scalar subqueries, four of them index ends and one a count of the few claimed cancels, so that
    a poll can check it before deciding to render anything: a COUNT(*) of every batch instead of MAX(id) cost 14 ms
    at 100,000 batches on PostgreSQL. The fifth part, when a final batch last changed, moves only with the first:
    it is there for settled_version(). Its parts are whatever the database returns; compare them, do not interpret
    them.
    """
    with connection.cursor() as cursor:
        cursor.execute(DATA_VERSION_SQL)
        return tuple(cursor.fetchone())


def settled_version(version: tuple) -> tuple:
    """The parts of a data_version() that move whenever a final batch may have changed: the newest id (a batch added,
    final or not) and when a final batch last changed (became final, or was recorded again once final). With the
    number of batches still running, what the list's figures of final batches are kept by (batches.list_figures)."""
    return version[1], version[4]


class ConnectionKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    AZURE = "azure", "Azure OpenAI"
    COMPATIBLE = "compatible", "OpenAI-compatible"


class ConnectionSource(models.TextChoices):
    SETTINGS = "settings", "the OPENAI_* settings"
    FILE = "file", "the connections file"
    ADMIN = "admin", "the admin"


# The connection the single-key settings (OPENAI_API_KEY, OPENAI_BASE_URL, ...) define, which every batch recorded
# before connections existed belongs to.
DEFAULT_CONNECTION = "default"
ARCHIVE_CHOICES = [("new", "new"), ("all", "all"), ("on-open", "on open"), ("off", "off")]


# The grants of a team that let its members see a connection's batches (cancel and create imply view).
VIEW_GRANTS = ("view_teams", "cancel_teams", "create_teams")


class ConnectionQuerySet(models.QuerySet):
    def default(self) -> Connection:
        """The connection of the single-key settings, made on first use (a database emptied by a test, say).
        Reading it first applies the configuration, once per process (batches.configured_connections)."""
        from batches.configured_connections import default_is_configured, ensure_applied

        ensure_applied()
        connection = self.filter(slug=DEFAULT_CONNECTION).first()
        if connection is None:
            connection, _ = self.get_or_create(
                slug=DEFAULT_CONNECTION,
                defaults={
                    "name": DEFAULT_CONNECTION,
                    "source": ConnectionSource.SETTINGS,
                    "open_to_everyone": True,
                    "configured": default_is_configured(),
                },
            )
        return connection

    def viewable_by(self, user):
        """The connections whose batches `user` may see: granted to one of their teams for view, cancel or create
        (either implies view), open to every signed-in user, or every one for a superuser."""
        return self._granted(user, VIEW_GRANTS, open_to_everyone=True)

    def viewable_by_team(self, team_id: int):
        """The connections whose batches every member of the team may see, as viewable_by: granted to the team for
        view, cancel or create, or open to everyone."""
        allowed = Q(open_to_everyone=True)
        for grant in VIEW_GRANTS:
            allowed |= Q(**{grant: team_id})
        return self.filter(pk__in=self.filter(allowed).values("pk"))

    def cancellable_by(self, user):
        """Where `user` may cancel: granted, and configured (a connection kept for its history has no key)."""
        return self._granted(user, ("cancel_teams",), open_permission="batches.cancel_batch").filter(configured=True)

    def creatable_by(self, user):
        """Where `user` may create: granted, configured and not paused."""
        granted = self._granted(user, ("create_teams",), open_permission="batches.create_batch")
        return granted.filter(configured=True, paused=False)

    def grants_of(self, user) -> tuple[list[Connection], list[Connection], list[Connection], int]:
        """viewable_by(user), cancellable_by(user) and creatable_by(user) as lists, and how many connections exist,
        from one query of every connection with the user's teams' grants (plus the user's teams, and their
        permissions only when a connection open to everyone needs them): a page asks all of them. The single-key
        settings' connection exists before anyone is granted it: made here if it is missing (see _every)."""
        from batches.configured_connections import ensure_applied

        ensure_applied()
        if user is None or not user.is_authenticated or not user.is_active:
            return [], [], [], self.count()
        if user.is_superuser:
            every = self._every()
            cancellable = [connection for connection in every if connection.configured]
            creatable = [connection for connection in cancellable if not connection.paused]
            return every, cancellable, creatable, len(every)
        teams = list(user.groups.values_list("pk", flat=True))
        grants = {}
        if teams:
            for action in ("view", "cancel", "create"):
                through = getattr(Connection, f"{action}_teams").through.objects
                grants[f"granted_{action}"] = Exists(through.filter(connection_id=OuterRef("pk"), group_id__in=teams))
        every = self._every(**grants)

        def granted(connection, grant: str) -> bool:
            return bool(getattr(connection, grant, False))

        def open_with(connection, permission: str) -> bool:
            return connection.open_to_everyone and user.has_perm(permission)

        viewable = [
            connection
            for connection in every
            if connection.open_to_everyone or any(granted(connection, grant) for grant in grants)
        ]
        cancellable = [
            connection
            for connection in every
            if connection.configured
            and (granted(connection, "granted_cancel") or open_with(connection, "batches.cancel_batch"))
        ]
        creatable = [
            connection
            for connection in every
            if connection.configured
            and not connection.paused
            and (granted(connection, "granted_create") or open_with(connection, "batches.create_batch"))
        ]
        return viewable, cancellable, creatable, len(every)

    def _every(self, **annotations) -> list[Connection]:
        """Every connection, annotated: the default connection made first if it is missing (a database just
        emptied), so that reading the grants stays one query once it exists, where default() first would be two."""
        every = list(self.annotate(**annotations))
        if not any(connection.slug == DEFAULT_CONNECTION for connection in every):
            self.default()
            every = list(self.annotate(**annotations))
        return every

    def _granted(self, user, grants, *, open_to_everyone=False, open_permission=""):
        """A connection open to everyone lets every signed-in user view it, and cancel or create with the Django
        permission of that name (as before connections existed); the others only the teams they grant it to."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superuser:
            return self.all()
        teams = list(user.groups.values_list("pk", flat=True))
        allowed = Q()
        for grant in grants:
            allowed |= Q(**{f"{grant}__in": teams}) if teams else Q(pk__in=[])
        if open_to_everyone or (open_permission and user.has_perm(open_permission)):
            allowed |= Q(open_to_everyone=True)
        return self.filter(pk__in=self.filter(allowed).values("pk"))

    def syncing(self):
        """The connections the sync loop walks: not paused, and configured (the default one only while the
        single-key settings or the sandbox define it). The configuration is applied first, once per process."""
        from batches.configured_connections import ensure_applied

        ensure_applied()
        return self.filter(paused=False, configured=True).order_by("slug")


class Connection(models.Model):
    """One upstream account: an OpenAI project, an Azure OpenAI resource, or an OpenAI-compatible gateway.

    Where its key lives depends on where it was defined (`source`): the OPENAI_* settings (the default connection),
    an environment variable named by the connections file, or the admin, encrypted at rest (batches.connections).
    Teams (Django groups) are granted view, cancel and create; see ConnectionQuerySet.
    """

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True)
    kind = models.CharField(max_length=12, choices=ConnectionKind.choices, default=ConnectionKind.OPENAI)
    source = models.CharField(max_length=10, choices=ConnectionSource.choices, default=ConnectionSource.ADMIN)
    base_url = models.URLField(max_length=500, blank=True)
    api_key_env = models.CharField(max_length=100, blank=True)
    api_key_encrypted = models.TextField(blank=True)
    organization = models.CharField(max_length=100, blank=True)
    project = models.CharField(max_length=100, blank=True)
    webhook_secret_env = models.CharField(max_length=100, blank=True)
    webhook_secret_encrypted = models.TextField(blank=True)
    budget_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: BATCHBOARD_UPSTREAM_BUDGET"
    )
    monthly_budget = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    archive = models.CharField(max_length=8, choices=ARCHIVE_CHOICES, blank=True, help_text="Empty: BATCHBOARD_ARCHIVE")
    paused = models.BooleanField(default=False)
    # False for a connection kept for its history whose definition is gone (no file entry, no key set).
    configured = models.BooleanField(default=True)
    open_to_everyone = models.BooleanField(
        default=False,
        help_text="Every signed-in user sees its batches; cancel and create follow the Django permissions.",
    )
    view_teams = models.ManyToManyField("auth.Group", blank=True, related_name="connections_viewed")
    cancel_teams = models.ManyToManyField("auth.Group", blank=True, related_name="connections_cancelled")
    create_teams = models.ManyToManyField("auth.Group", blank=True, related_name="connections_created")
    last_webhook_at = models.DateTimeField(null=True, blank=True)

    objects = ConnectionQuerySet.as_manager()

    class Meta:
        ordering = ["name", "slug"]

    def __str__(self):
        return self.name

    @property
    def is_default(self) -> bool:
        return self.slug == DEFAULT_CONNECTION

    @property
    def list_state(self) -> str:
        """The name of its sync loop's SyncState row (the default connection keeps the name it had before)."""
        from batches.freshness import LIST_STATE

        return LIST_STATE if self.is_default else f"{LIST_STATE}:{self.slug}"

    @property
    def upstream_budget(self) -> int:
        return int(self.budget_per_minute or settings.BATCHBOARD_UPSTREAM_BUDGET)

    @property
    def archive_mode(self) -> str:
        return self.archive or settings.BATCHBOARD_ARCHIVE

    @property
    def id_shapes(self) -> services.IdShapes:
        """The ids its provider answers with: a compatible provider's have no fixed shape, only a path-safe one."""
        return services.ANY_IDS if self.kind == ConnectionKind.COMPATIBLE else services.OPENAI_IDS

    def upstream(self) -> services.Upstream:
        """Where its calls go, with its key (batches.connections reads it from where it is kept). In a process whose
        first use of connections this is (a task worker, say), the configuration is applied first and this row read
        again, so that the call follows the file this process was started with."""
        from batches import connections
        from batches.configured_connections import ensure_applied

        if ensure_applied() and self.pk is not None:
            self.refresh_from_db()
        return connections.upstream_of(self)


def default_connection_id() -> int:
    """Batch.connection's default: rows made without one (tests, old code paths) belong to the default connection.
    Only its id is read, so that migrations calling it never select columns a later migration adds."""
    pk = Connection.objects.filter(slug=DEFAULT_CONNECTION).values_list("pk", flat=True).first()
    return pk if pk is not None else Connection.objects.default().pk


class Batch(models.Model):
    """One row per batch id: the latest observed payload and the columns the list filters and sorts on."""

    connection = models.ForeignKey(
        Connection, on_delete=models.PROTECT, related_name="batches", default=default_connection_id
    )
    batch_id = models.CharField(max_length=services.ID_LENGTH)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES)
    is_terminal = models.BooleanField(default=False)
    endpoint = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=128, blank=True)
    input_file_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    output_file_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    error_file_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    total_requests = models.PositiveIntegerField(default=0)
    completed_requests = models.PositiveIntegerField(default=0)
    failed_requests = models.PositiveIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    # Lower-cased id, file ids and metadata: the search box is a LIKE '%word%' over it, which no b-tree can seek, so
    # it is a scan. At 10k batches that is fine: on SQLite migration 0003 adds two covering indexes holding
    # search_text, so the scan reads those (a few hundred kB) rather than the rows with their payloads (~1 ms per
    # query in `manage.py bench`). On PostgreSQL (not benchmarked) it is a plain sequential scan; far beyond 10k
    # batches a pg_trgm GIN index would be the tool.
    search_text = models.TextField(blank=True)
    payload = models.JSONField()
    payload_hash = models.CharField(max_length=64)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    last_changed_at = models.DateTimeField(default=timezone.now)
    # Set when a user asks to cancel, before the upstream call, so concurrent clicks send one cancel.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=USERNAME_LENGTH, blank=True)
    # The API's `usage`, copied out of the payload so that the list and the summary price it without reading the
    # payload. Tokens, not dollars: a price changed in BATCHBOARD_PRICES applies to every batch at once. Null when
    # the API reported no usage (batches created before it did, or not yet started).
    input_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    cached_input_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    output_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    # When a page last took the right to refresh this batch from the API (see BatchQuerySet.claim_refresh).
    refresh_claimed_at = models.DateTimeField(null=True, blank=True)
    # What the metadata claims (batches.lineage_keys): the batch this one retries, the original batch of its job,
    # which attempt it is. Empty for a batch that claims nothing. A claim counts (final results, the job's cost and
    # view) only once lineage_state is VERIFIED: the retries app checks the lines against the parent's kept input.
    retry_of = models.CharField(max_length=services.ID_LENGTH, blank=True)
    job = models.CharField(max_length=services.ID_LENGTH, blank=True)
    attempt = models.PositiveSmallIntegerField(default=0)
    lineage_state = models.CharField(max_length=12, choices=LineageState.choices, blank=True)
    lineage_note = models.CharField(max_length=300, blank=True)
    # What the metadata claims about a split file (batches.lineage_keys.part_claim_of): the first part's id (its own
    # for the first part), this part's number and the count. Empty for a batch that is no part.
    part_of = models.CharField(max_length=services.ID_LENGTH, blank=True)
    part = models.PositiveSmallIntegerField(default=0)
    parts = models.PositiveSmallIntegerField(default=0)

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-batch_id"]
        indexes = [
            models.Index(fields=["-created_at", "-batch_id"], name="batch_newest"),
            models.Index(fields=["status", "-created_at"], name="batch_status_newest"),
            models.Index(fields=["endpoint", "-created_at"], name="batch_endpoint_newest"),
            models.Index(fields=["model", "-created_at"], name="batch_model_newest"),
            models.Index(fields=["is_terminal", "-created_at"], name="batch_terminal_newest"),
            models.Index(fields=["finished_at"], name="batch_finished"),
            # Covering indexes, measured with `manage.py bench`: the status counts under an endpoint or model filter,
            # the filter menus (DISTINCT endpoint, model) and the summary strip (an aggregate over every batch) read
            # these narrow indexes instead of the wide rows (each row carries its JSON payload).
            # With the connection last, they also serve a viewer of some connections (BatchQuerySet.in_connections).
            models.Index(fields=["endpoint", "model", "status", "connection"], name="batch_endpoint_model_status"),
            models.Index(fields=["status", "connection"], name="batch_status_connection"),
            models.Index(fields=["model", "status"], name="batch_model_status"),
            models.Index(
                fields=["is_terminal", "finished_at", "status", *REQUEST_COUNT_FIELDS],
                name="batch_summary",
            ),
            # data_version() reads the ends of these two instead of scanning every row (3 ms at 10k batches).
            models.Index(fields=["last_changed_at"], name="batch_changed"),
            models.Index(fields=["cancel_requested_at"], name="batch_cancel_claimed"),
            # The cost of running batches per connection (batches.spending, the strip and the spending page) reads
            # this narrow index: grouped by connection and model in its order, filtered by connection by seeks.
            models.Index(
                fields=["is_terminal", "connection", "model", *TOKEN_FIELDS], name="batch_spending_by_connection"
            ),
            # needs_attention() counts over this narrow index instead of the wide rows; the expiry order seeks it.
            models.Index(fields=["status", "failed_requests", "last_changed_at", "created_at"], name="batch_attention"),
            models.Index(fields=["is_terminal", "expires_at"], name="batch_expiry"),
            # The "failed-lines" filter and its count, and needs attention's failure share (per status, failed against
            # total requests, per connection for batches.list_figures), read only this narrow index of the batches
            # with a failed request.
            models.Index(
                fields=["status", "failed_requests", "total_requests", "connection"],
                name="batch_failed_lines",
                condition=Q(failed_requests__gt=0),
            ),
            # A job's batches, a batch's retries, and the automatic retry's look for an existing child.
            models.Index(fields=["job", "lineage_state"], name="batch_job"),
            models.Index(fields=["retry_of", "attempt"], name="batch_retry_of"),
            # A split job's parts (BatchQuerySet.parts_of).
            models.Index(fields=["connection", "part_of"], name="batch_part_of", condition=~Q(part_of="")),
            # An id looked up across the viewer's connections (a URL carries the id alone).
            models.Index(fields=["batch_id"], name="batch_id"),
            models.Index(fields=["connection", "-created_at"], name="batch_connection_newest"),
            # The figures of one connection's batches (its prefix: the list's connection filter with other filters)
            # without reading the wide rows.
            models.Index(
                fields=[
                    "connection",
                    "status",
                    "is_terminal",
                    "failed_requests",
                    "total_requests",
                    "created_at",
                    "last_changed_at",
                    "expires_at",
                ],
                name="batch_connection_counts",
            ),
            # What is read of the running batches after each change (BatchQuerySet.running_figures and
            # running_figures_per_connection), from a seek of this narrow index instead of their wide rows. Not a
            # partial index of the running ones: SQLite, without statistics, prefers batch_expiry's equality on
            # is_terminal to it.
            models.Index(
                fields=[
                    "is_terminal",
                    "status",
                    "failed_requests",
                    "total_requests",
                    "completed_requests",
                    "created_at",
                    "last_changed_at",
                    "expires_at",
                    "connection",
                ],
                name="batch_running_figures",
            ),
            # batch_failed_lines for one connection (a viewer of some connections, or the connection filter):
            # needs attention's failure share and the failed-lines count read it instead of the rows.
            models.Index(
                fields=["connection", "status", "failed_requests", "total_requests"],
                name="batch_connection_failed",
                condition=Q(failed_requests__gt=0),
            ),
        ]
        constraints = [
            # Ids are unique within a connection: two compatible providers may hand out the same one.
            models.UniqueConstraint(fields=["connection", "batch_id"], name="batch_unique_id_per_connection"),
        ]
        verbose_name_plural = "batches"
        permissions = [
            ("cancel_batch", "Can cancel batches"),
            ("create_batch", "Can create batches"),
        ]

    def __str__(self):
        return self.batch_id

    @property
    def api(self) -> services.ApiBatch:
        """The latest payload, parsed by the service module."""
        return services.ApiBatch.from_api(self.payload, services.ANY_IDS)  # checked for its connection when stored

    def download_stem(self, batch_id: str = "") -> str:
        """The start of its downloads' file names: its id (or `batch_id`, of its job), after the connection's slug
        outside the default connection (an id may exist in two connections: a folder of downloads tells them
        apart)."""
        batch_id = batch_id or self.batch_id
        return batch_id if self.connection.is_default else f"{self.connection.slug}-{batch_id}"

    @property
    def is_cancellable(self) -> bool:
        return self.status in services.CANCELLABLE_STATUSES

    @property
    def processed_requests(self) -> int:
        return self.completed_requests + self.failed_requests

    @property
    def badge(self) -> tuple[str, str]:
        """(css modifier, label) for the status badge; honest about completed batches whose requests failed."""
        return status_badge(self.status, self.completed_requests, self.failed_requests, self.total_requests)

    @property
    def description(self) -> str:
        return self.metadata.get(DESCRIPTION_KEY) or self.metadata.get("name") or ""

    @property
    def metadata_pairs(self) -> list[tuple[str, str]]:
        """The metadata as (key, value) pairs, what templates iterate: a template looking up `.items` on the dict
        would get the value of a key named "items" instead."""
        metadata = self.metadata if isinstance(self.metadata, dict) else {}
        return [(str(key), str(value)) for key, value in metadata.items()]

    @property
    def metadata_text(self) -> str:
        """Every metadata pair as `key=value`, for a tooltip."""
        return " · ".join(f"{key}={value}" for key, value in self.metadata_pairs)

    @property
    def metadata_summary(self) -> str:
        """One short line for the list: the description, else the first pairs."""
        text = self.description or self.metadata_text
        if len(text) > METADATA_SUMMARY_LENGTH:
            text = text[: METADATA_SUMMARY_LENGTH - 1].rstrip() + "…"
        return text

    @property
    def price(self) -> pricing.Price | None:
        return pricing.price_for(self.model)

    @property
    def has_usage(self) -> bool:
        return self.input_tokens is not None

    @property
    def cost(self):
        """The cost of the usage reported so far (the final cost once the batch is final); None when there is no
        usage or no price known for the model."""
        return pricing.usage_cost(self.model, self.input_tokens, self.cached_input_tokens, self.output_tokens)

    @property
    def cancel_pending(self) -> bool:
        """A user asked to cancel and the API has not reported `cancelling` yet (or the request is in flight)."""
        if not self.cancel_requested_at or not self.is_cancellable:
            return False
        return self.cancel_requested_at > timezone.now() - timedelta(seconds=CANCEL_CLAIM_SECONDS)

    @property
    def model_label(self) -> str:
        """The model, or why none is shown: the one rule for the list and the detail page."""
        if self.model:
            return self.model
        return "—" if self.is_terminal else "model not known yet"

    def note_model_from_file(self, model: str | None) -> None:
        """The model read from the input file, shown while the API does not name it yet (validating)."""
        model = normalise.text(model, normalise.MODEL_LENGTH) if model else model
        if model and not self.model:
            Batch.objects.filter(pk=self.pk, model="").update(model=model)
            self.model = model

    @property
    def status_label(self) -> str:
        return services.status_label(self.status)

    @property
    def reported_status(self) -> str:
        """The status the API sent when batchboard does not know it (the status is then "unknown"); else ""."""
        if self.status != normalise.UNKNOWN_STATUS:
            return ""
        sent = self.payload.get("status") if isinstance(self.payload, dict) else None
        return sent if isinstance(sent, str) else "(none)"

    @property
    def can_cancel_now(self) -> bool:
        """Whether a Cancel button makes sense: the batch can still be cancelled and nobody has asked yet."""
        return self.is_cancellable and not self.cancel_pending

    def _apply(
        self, batch: services.ApiBatch, digest: str, observed_at: datetime, ids: services.IdShapes = services.OPENAI_IDS
    ) -> None:
        """Copy an observation into the columns named in APPLIED_FIELDS; `ids` are the shapes of its connection's
        ids (Connection.id_shapes), which a retry's claim must have."""
        self.status = batch.status
        self.is_terminal = batch.is_terminal
        self.endpoint = batch.endpoint or ""
        # Until the API names the model (it does not while validating), keep the one read from the input file.
        self.model = batch.model or self.model or ""
        self.input_file_id = batch.input_file_id or ""
        self.output_file_id = batch.output_file_id or ""
        self.error_file_id = batch.error_file_id or ""
        self.created_at = services.from_unix(batch.created_at) or observed_at
        self.expires_at = services.from_unix(batch.expires_at)
        finished = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at
        self.finished_at = services.from_unix(finished)
        self.total_requests = batch.request_counts.total
        self.completed_requests = batch.request_counts.completed
        self.failed_requests = batch.request_counts.failed
        self.metadata = batch.metadata
        self.search_text = " ".join([batch.id, *batch.file_ids, *batch.metadata.keys(), *batch.metadata.values()])
        self.search_text = self.search_text.lower()
        self.payload = batch.raw
        self.payload_hash = digest
        usage = batch.usage
        self.input_tokens = usage.input_tokens if usage else None
        self.cached_input_tokens = usage.cached_tokens if usage else None
        self.output_tokens = usage.output_tokens if usage else None
        claim = claim_of(batch.id, batch.metadata, ids.batch)
        if self.pk is None or claim.retry_of != self.retry_of:
            # Metadata never changes after create; the verdict is the retries app's, kept across observations.
            self.lineage_state = LineageState.UNVERIFIED if claim.retry_of else LineageState.NONE
            self.lineage_note = ""
        self.retry_of, self.job, self.attempt = claim.retry_of, claim.job, claim.attempt
        part = part_claim_of(batch.id, batch.metadata, ids.batch)
        self.part_of, self.part, self.parts = part.first, part.part, part.parts

    @property
    def is_verified_retry(self) -> bool:
        return bool(self.retry_of) and self.lineage_state == LineageState.VERIFIED

    @property
    def job_id(self) -> str:
        """The original batch of the job this batch counts in: the claimed one once verified, else itself."""
        return self.job if self.is_verified_retry else self.batch_id


APPLIED_FIELDS = (
    "status",
    "is_terminal",
    "endpoint",
    "model",
    "input_file_id",
    "output_file_id",
    "error_file_id",
    "created_at",
    "expires_at",
    "finished_at",
    "total_requests",
    "completed_requests",
    "failed_requests",
    "metadata",
    "search_text",
    "payload",
    "payload_hash",
    *TOKEN_FIELDS,
    "retry_of",
    "job",
    "attempt",
    "lineage_state",
    "lineage_note",
    "part_of",
    "part",
    "parts",
)


class BatchSnapshot(models.Model):
    """A distinct state of a batch, as observed at `observed_at`. Consecutive equal observations add no row."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="snapshots")
    observed_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES)
    total_requests = models.PositiveIntegerField(default=0)
    completed_requests = models.PositiveIntegerField(default=0)
    failed_requests = models.PositiveIntegerField(default=0)
    payload = models.JSONField()
    payload_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["observed_at", "id"]
        indexes = [
            models.Index(fields=["batch", "observed_at"], name="snapshot_batch_observed"),
            models.Index(fields=["observed_at"], name="snapshot_observed"),
        ]
        constraints = [
            # With the row lock in record_batch this makes a duplicate impossible even under a racing writer.
            models.UniqueConstraint(fields=["batch", "payload_hash"], name="snapshot_unique_state"),
        ]

    def __str__(self):
        return f"{self.batch.batch_id} {self.status} @ {self.observed_at:%Y-%m-%d %H:%M:%S}"

    @property
    def processed_requests(self) -> int:
        return self.completed_requests + self.failed_requests


@dataclass
class Recorded:
    """What one call of record_batches stored: the ids of batches new to the cache, of those whose stored state
    changed (new ones included), of those that became final, and the rows it wrote (new and changed ones)."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    became_final: list[str] = field(default_factory=list)
    rows: dict[str, Batch] = field(default_factory=dict, repr=False)
    # Batches the database refused even after normalising (logged and skipped), with what it said.
    skipped: list[str] = field(default_factory=list)
    refused: dict[str, BaseException] = field(default_factory=dict, repr=False)


def record_batches(
    batches: Iterable[services.ApiBatch],
    observed_at: datetime | None = None,
    *,
    historical: bool = False,
    connection: Connection | None = None,
) -> Recorded:
    """Store what the API said about these batches: the one recording function, for every path (the sync loop's
    top walk and import, a page's retrieve, a cancel's or create's answer).

    One query finds what is known; unchanged batches are marked seen in one UPDATE, new ones inserted in bulk, changed
    ones recorded one by one under a row lock (they are few: what changed since the last look). Once the transaction
    commits, batches.events announces every new or changed state, and every batch that became final, so that the
    reactions of other apps follow whatever path recorded it. `historical` marks the history import's old batches.

    Safe when several writers record the same batch at once: an observation older than the stored state never
    overwrites it, and the unique (batch, payload) constraint stops a duplicate snapshot.

    The batches are those of one `connection` (the default one when None): ids are unique within a connection.
    """
    observed_at = observed_at or timezone.now()
    recorded = Recorded()
    unique = {batch.id: batch for batch in batches}
    if not unique:
        return recorded
    connection = connection or Connection.objects.default()
    stored = Batch.objects.filter(connection=connection)
    digests = {batch_id: payload_digest(batch.raw) for batch_id, batch in unique.items()}
    known = dict(stored.filter(batch_id__in=digests).values_list("batch_id", "payload_hash"))
    unchanged = {batch_id for batch_id, digest in known.items() if digests[batch_id] == digest}
    new = [batch for batch_id, batch in unique.items() if batch_id not in known]
    changed = [batch for batch_id, batch in unique.items() if batch_id in known and batch_id not in unchanged]
    if len(new) == 1:
        # One new batch (a retrieve, a create's answer) takes the locked path: a bulk insert of one saves nothing.
        changed, new = new + changed, []
    if unchanged:
        stored.mark_seen(unchanged, observed_at)
    changes: list[_Change] = []
    if len(new) > 1:
        inserted = _insert_new(new, digests, observed_at, connection)
        if inserted is None:
            changed = new + changed  # Another writer recorded one of them meanwhile: one by one, under the lock.
        else:
            changes += inserted
    for batch in changed:
        try:
            with transaction.atomic():  # a savepoint: one batch the database refuses never stops the others
                change = _record_with_retries(batch, digests[batch.id], observed_at, connection)
        except ROW_REFUSED as exc:
            if not _refused(exc):
                raise
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            logger.warning(
                "Skipped recording %s: the database refused it (%s: %s)", batch.id, type(exc).__name__, reason
            )
            recorded.skipped.append(batch.id)
            recorded.refused[batch.id] = exc
            continue
        if change is not None:
            changes.append(change)
    for change in changes:
        recorded.rows[change.row.batch_id] = change.row
        recorded.changed.append(change.row.batch_id)
        if change.created:
            recorded.new.append(change.row.batch_id)
        if change.became_final:
            recorded.became_final.append(change.row.batch_id)
    if changes:
        transaction.on_commit(partial(_announce, changes, historical))
    return recorded


def record_batch(
    batch: services.ApiBatch, observed_at: datetime | None = None, *, connection: Connection | None = None
) -> Batch:
    """record_batches for one batch (a retrieve, a cancel's or create's answer): its stored row. Raises what the
    database said if it refused the batch."""
    connection = connection or Connection.objects.default()
    recorded = record_batches([batch], observed_at, connection=connection)
    if batch.id in recorded.refused:
        raise recorded.refused[batch.id]
    return recorded.rows.get(batch.id) or Batch.objects.get(connection=connection, batch_id=batch.id)


@dataclass(frozen=True)
class _Change:
    row: Batch
    created: bool
    became_final: bool


class _ReceiverDatabaseError(Exception):
    """A receiver's database error inside the announcing transaction: it cannot be committed as it is."""


def _announce(changes: list[_Change], historical: bool) -> None:
    """Send batches.events' signals for stored changes (after commit: receivers see what was stored).

    In one transaction, so that what the receivers write for a page of batches (their reactions) is one write, not
    one per batch: SQLite has a single writer, which the sync loop and every task worker share. If a receiver's
    database error spoils that transaction, the changes are announced again one by one. A receiver that fails is
    logged and never undoes the recording or stops the other receivers.
    """
    try:
        with transaction.atomic():
            for change in changes:
                if any(isinstance(error, DatabaseError) for error in _send(change, historical)):
                    raise _ReceiverDatabaseError
    except (DatabaseError, _ReceiverDatabaseError):
        logger.warning("Announcing %s change(s) in one transaction failed; announcing them one by one.", len(changes))
        for change in changes:
            _send(change, historical)


def _send(change: _Change, historical: bool) -> list[Exception]:
    sent = events.batch_changed.send_robust(
        sender=Batch,
        batch_pk=change.row.pk,
        batch_id=change.row.batch_id,
        connection_id=change.row.connection_id,
        created=change.created,
        historical=historical,
    )
    if change.became_final:
        sent += events.batch_became_final.send_robust(
            sender=Batch,
            batch_pk=change.row.pk,
            batch_id=change.row.batch_id,
            connection_id=change.row.connection_id,
            historical=historical,
        )
    errors = [outcome for _receiver, outcome in sent if isinstance(outcome, Exception)]
    for receiver, outcome in sent:
        if isinstance(outcome, Exception):
            logger.error("A receiver of %s's new state failed: %s", change.row.batch_id, receiver, exc_info=outcome)
    return errors


def _insert_new(
    batches: list[services.ApiBatch], digests: dict[str, str], observed_at: datetime, connection: Connection
) -> list | None:
    """Store batches the cache has never seen, with their first snapshots, in two bulk inserts (an import's page);
    None when another writer recorded one of them meanwhile (the unique batch id refuses the insert)."""
    rows = []
    for batch in batches:
        row = Batch(connection=connection, batch_id=batch.id, first_seen_at=observed_at)
        row._apply(batch, digests[batch.id], observed_at, connection.id_shapes)
        row.last_seen_at = row.last_changed_at = observed_at
        rows.append(row)
    try:
        with transaction.atomic():
            Batch.objects.bulk_create(rows)
            if any(row.pk is None for row in rows):  # Backends that do not return ids from a bulk insert.
                stored = Batch.objects.filter(connection=connection, batch_id__in=digests)
                ids = dict(stored.values_list("batch_id", "pk"))
                for row in rows:
                    row.pk = ids[row.batch_id]
            DailySpend.count_new(rows)
            BatchSnapshot.objects.bulk_create(
                [
                    _snapshot(row, batch, digests[batch.id], observed_at)
                    for row, batch in zip(rows, batches, strict=True)
                ]
            )
    except ROW_REFUSED as exc:
        if not _refused(exc):
            raise
        return None  # Another writer recorded one of them meanwhile, or the database refuses one: one by one.
    return [_Change(row, created=True, became_final=row.is_terminal) for row in rows]


# What the database (or its driver: SQLite's refuses an integer beyond 64 bits with OverflowError) raises for one
# row it will not store. A database that is down or locked (OperationalError, InterfaceError) is not the row's fault:
# it fails the whole pass instead of skipping every batch.
ROW_REFUSED = (DatabaseError, OverflowError, ValueError)


def _refused(exc: BaseException) -> bool:
    return not isinstance(exc, OperationalError | InterfaceError)


def _record_with_retries(
    batch: services.ApiBatch, digest: str, observed_at: datetime, connection: Connection
) -> _Change | None:
    for _attempt in range(2):
        try:
            return _record(batch, digest, observed_at, connection)
        except IntegrityError:
            continue  # Another writer created the same row between our read and write; read it again.
    # Refused a third time, it is this row's values the database refuses (a check constraint): raised for the caller
    # (record_batches skips it).
    return _record(batch, digest, observed_at, connection)


def _record(batch: services.ApiBatch, digest: str, observed_at: datetime, connection: Connection) -> _Change | None:
    """Record one observation under the row's lock (an IMMEDIATE transaction on SQLite): the change it made, or
    None when it was the stored state already or older than it."""
    with transaction.atomic():
        row = Batch.objects.select_for_update().filter(connection=connection, batch_id=batch.id).first()
        if row is None:
            row = Batch(connection=connection, batch_id=batch.id, first_seen_at=observed_at)
            row._apply(batch, digest, observed_at, connection.id_shapes)
            row.last_seen_at = row.last_changed_at = observed_at
            row.save(force_insert=True)
            _add_snapshot(row, batch, digest, observed_at)
            DailySpend.count(None, row)
            return _Change(row, created=True, became_final=row.is_terminal)
        if row.payload_hash == digest:
            Batch.objects.filter(pk=row.pk, last_seen_at__lt=observed_at).update(last_seen_at=observed_at)
            return None
        if progress_key(batch) < progress_key(row.api):
            return None  # A late answer describing an older state: the stored one is newer.
        # Racing writers take the lock in their own order, not in the order of their clocks: never let the history's
        # times go backwards.
        changed_at = max(row.last_seen_at, observed_at)
        was_final = row.is_terminal
        spent_before = DailySpend.contribution(row)
        row._apply(batch, digest, changed_at, connection.id_shapes)
        row.last_seen_at = row.last_changed_at = changed_at
        # Only the columns _apply owns: cancel_requested_* are claimed by concurrent UPDATEs (claim_cancel).
        row.save(update_fields=[*APPLIED_FIELDS, "last_seen_at", "last_changed_at"])
        DailySpend.count(spent_before, row)
        if not BatchSnapshot.objects.filter(batch=row, payload_hash=digest).exists():
            _add_snapshot(row, batch, digest, changed_at)
        return _Change(row, created=False, became_final=row.is_terminal and not was_final)


def _add_snapshot(row: Batch, batch: services.ApiBatch, digest: str, observed_at: datetime) -> None:
    _snapshot(row, batch, digest, observed_at).save(force_insert=True)


def _snapshot(row: Batch, batch: services.ApiBatch, digest: str, observed_at: datetime) -> BatchSnapshot:
    return BatchSnapshot(
        batch=row,
        observed_at=observed_at,
        status=batch.status,
        total_requests=batch.request_counts.total,
        completed_requests=batch.request_counts.completed,
        failed_requests=batch.request_counts.failed,
        payload=batch.raw,
        payload_hash=digest,
    )


class DailySpend(models.Model):
    """The token usage of the batches that finished on a day (in the dashboard's time zone), per model.

    The summary strip sums a month of these rows instead of every batch finished in the month. record_batches keeps
    them in the same transaction as the batch's row: a batch is counted on the day it finished, once, and moved or
    corrected if a later observation changes its usage or end. Tokens, not dollars, as on Batch.
    """

    day = models.DateField()
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=128, blank=True)
    batches = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "connection", "model"], name="daily_spend_unique_day_model")
        ]

    def __str__(self):
        return f"{self.day} {self.model}"

    @staticmethod
    def day_of(moment: datetime | None = None) -> date:
        """The day of `moment` (now by default) in the dashboard's TIME_ZONE, never a viewer's: a batch recorded
        during a request (a cancel, a refresh) must land on the same day as when the sync loop records it."""
        return timezone.localdate(moment, timezone.get_default_timezone())

    @staticmethod
    def contribution(row: Batch) -> tuple | None:
        """What a batch adds to the daily totals: (day, connection id, model, tokens...) once it is final with usage,
        else None."""
        if not row.is_terminal or row.finished_at is None or row.input_tokens is None:
            return None
        if not (row.input_tokens or row.cached_input_tokens or row.output_tokens):
            return None  # used no token (failed validation): adds nothing, and must not count as an unpriced batch
        tokens = (row.input_tokens, row.cached_input_tokens or 0, row.output_tokens or 0)
        return (DailySpend.day_of(row.finished_at), row.connection_id, row.model, *tokens)

    @classmethod
    def count(cls, before: tuple | None, row: Batch) -> None:
        """Move a batch's share of the totals from what it was (`before`) to what it is now; call inside the
        transaction that saved the row. A new (day, model) row racing another writer's raises IntegrityError,
        which rolls the whole recording back for record_batches to retry."""
        after = cls.contribution(row)
        if before == after:
            return
        if before is not None:
            day, connection_id, model, *tokens = before
            cls._add(day, connection_id, model, -1, [-count for count in tokens])
        if after is not None:
            day, connection_id, model, *tokens = after
            cls._add(day, connection_id, model, 1, tokens)

    @classmethod
    @transaction.atomic
    def rebuild(cls) -> int:
        """Recompute every daily total from the batches (after a change of TIME_ZONE, or rows written in bulk).
        Returns the number of daily rows."""
        finished = Batch.objects.filter(is_terminal=True, finished_at__isnull=False, input_tokens__isnull=False)
        columns = finished.values_list("finished_at", "connection_id", "model", *TOKEN_FIELDS)
        totals = cls._totals(
            (cls.day_of(finished_at), connection_id, model, *tokens)
            for finished_at, connection_id, model, *tokens in columns.iterator()
        )
        cls.objects.all().delete()
        rows = [
            cls(
                day=day,
                connection_id=connection_id,
                model=model,
                batches=n,
                **dict(zip(TOKEN_FIELDS, tokens, strict=True)),
            )
            for (day, connection_id, model), (n, *tokens) in totals.items()
        ]
        cls.objects.bulk_create(rows, batch_size=1000)
        return len(rows)

    @classmethod
    def count_new(cls, rows: list[Batch]) -> None:
        """Add batches recorded for the first time (an import's page, in bulk): one UPDATE per day and model."""
        for (day, connection_id, model), (count, *tokens) in cls._totals(map(cls.contribution, rows)).items():
            cls._add(day, connection_id, model, count, tokens)

    @staticmethod
    def _totals(contributions) -> dict[tuple, list[int]]:
        """(day, connection id, model) -> [batches, *tokens], summed over contributions (None ones left out)."""
        totals: dict[tuple, list[int]] = {}
        for contribution in contributions:
            if contribution is None:
                continue
            day, connection_id, model, *tokens = contribution
            total = totals.setdefault((day, connection_id, model), [0] * (1 + len(TOKEN_FIELDS)))
            total[0] += 1
            for index, count in enumerate(tokens, start=1):
                total[index] += count or 0
        return totals

    @classmethod
    def _add(cls, day, connection_id: int, model: str, batches: int, tokens) -> None:
        """Add `batches` and `tokens` (negative to take them away) to the day's row, creating it if it is new."""
        changes = {name: models.F(name) + value for name, value in zip(TOKEN_FIELDS, tokens, strict=True)}
        rows = cls.objects.filter(day=day, connection_id=connection_id, model=model)
        updated = rows.update(batches=models.F("batches") + batches, **changes)
        if not updated and batches > 0:
            cls.objects.create(
                day=day,
                connection_id=connection_id,
                model=model,
                batches=batches,
                **dict(zip(TOKEN_FIELDS, tokens, strict=True)),
            )


class SyncStateQuerySet(models.QuerySet):
    def named(self, name: str) -> SyncState:
        """The state row called `name`, created on first use."""
        state = self.filter(name=name).first()
        if state is None:
            state, _ = self.get_or_create(name=name)
        return state

    def claim_pass(self, name: str, holder: str, now: datetime, *, lease_seconds: float, due_before: datetime) -> bool:
        """Take the lease for a pass over `name`: True for one caller, in any number of threads and processes.

        A conditional UPDATE: the lease must be free (released, or expired because its holder died without releasing
        it), and the last pass must have started before `due_before`, so two loops never walk in one interval. SQLite
        runs one writer at a time; PostgreSQL re-checks the WHERE clause once it holds the row lock.
        """
        self.named(name)
        lease_free = models.Q(lease_until__isnull=True) | models.Q(lease_until__lte=now)
        due = models.Q(claimed_at__isnull=True) | models.Q(claimed_at__lte=due_before)
        until = now + timedelta(seconds=lease_seconds)
        claimed = self.filter(lease_free, due, name=name).update(
            lease_holder=holder, lease_until=until, claimed_at=now, heartbeat_at=now
        )
        return claimed == 1

    def renew_lease(self, name: str, holder: str, now: datetime, *, lease_seconds: float) -> bool:
        """Extend our lease and beat the heart; False if it expired and another holder took it (stop walking)."""
        until = now + timedelta(seconds=lease_seconds)
        return bool(self.filter(name=name, lease_holder=holder).update(lease_until=until, heartbeat_at=now))

    def release_lease(self, name: str, holder: str) -> None:
        self.filter(name=name, lease_holder=holder).update(lease_until=None)

    def note_watched(self, name: str, now: datetime, *, every: float) -> None:
        """Someone is looking at the list: one small write per `every` seconds, however many viewers poll."""
        stale = models.Q(watched_at__isnull=True) | models.Q(watched_at__lt=now - timedelta(seconds=every))
        self.filter(stale, name=name).update(watched_at=now)


class SyncState(models.Model):
    """Bookkeeping for upstream refreshes, shared by every web process and every sync loop.

    The list's row holds the loop's lease (`lease_holder` until `lease_until`, renewed page by page, so a worker
    killed mid-walk leaves a lease that expires), its heartbeat, the last pass's outcome and duration, the high-water
    mark of the newest batch walked, the import's cursor and progress, and when someone last watched the list.
    """

    name = models.CharField(max_length=200, unique=True)
    # When the current (or last) pass started.
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_holder = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # Beaten at the start of a pass, after each page, and at its end: the "is the loop alive" signal.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    pass_seconds = models.FloatField(null=True, blank=True)
    watched_at = models.DateTimeField(null=True, blank=True)
    # The newest batch id at the top of the last top walk that ran to its end: that batch and every older one are
    # known (or being imported), so the next walk can stop below it. A walk that was interrupted leaves it alone.
    high_water_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    # The background import of the history: the id to list `after` next, how many batches it recorded, how far back
    # it reached, and when it reached the end.
    import_cursor = models.CharField(max_length=services.ID_LENGTH, blank=True)
    imported = models.PositiveIntegerField(default=0)
    import_reached = models.DateTimeField(null=True, blank=True)
    import_done_at = models.DateTimeField(null=True, blank=True)
    # The last pass stopped early because the upstream budget was spent (see batches.budget).
    budget_limited_at = models.DateTimeField(null=True, blank=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # Batches the database refused and the loop skipped (each logged), ever: /metrics' batchboard_sync_skipped_total.
    skipped_total = models.PositiveBigIntegerField(default=0)

    objects = SyncStateQuerySet.as_manager()

    def __str__(self):
        return self.name

    @property
    def is_failing(self) -> bool:
        return bool(self.failed_at and (not self.succeeded_at or self.failed_at > self.succeeded_at))

    @property
    def budget_limited(self) -> bool:
        return bool(self.budget_limited_at and (not self.succeeded_at or self.budget_limited_at >= self.succeeded_at))


class UpstreamMinute(models.Model):
    """Upstream calls made in one minute by every process together: the shared budget and the call counters.

    `minute` is the Unix minute (seconds // 60); minute 0 holds the totals of older minutes folded together, so the
    table stays small and the totals keep counting up (see batches.budget).
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    minute = models.BigIntegerField()
    calls = models.PositiveIntegerField(default=0)
    # Of `calls`, those of the sync loop and of cancels: each has a share of the minute kept for it.
    loop_calls = models.PositiveIntegerField(default=0)
    cancel_calls = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    rate_limited = models.PositiveIntegerField(default=0)
    # After a 429 every caller waits until then (the API's Retry-After); kept on the current minute's row.
    paused_until = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "minute"], name="upstream_minute_unique")]

    def __str__(self):
        return f"minute {self.minute}: {self.calls} calls"


class UserMinute(models.Model):
    """What one user did in one minute that a per-user limit counts (see batches.budget.allow_user).

    `key` names the limit and the user ("upstream:user:3", "creates:alice"); a row is counted up by one conditional
    UPDATE, so parallel requests in any process can never pass the limit together. Rows of past minutes are deleted
    when a new one opens.
    """

    key = models.CharField(max_length=200)
    minute = models.BigIntegerField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "minute"], name="user_minute_unique")]
        indexes = [models.Index(fields=["minute"], name="user_minute_minute")]

    def __str__(self):
        return f"{self.key} in minute {self.minute}: {self.count}"


class BatchCreationQuerySet(models.QuerySet):
    def claim(self, token, user: str) -> tuple[BatchCreation | None, bool]:
        """(claim, True) when this call now owns the form token; else (the existing claim or None, False).

        The unique token makes this safe across processes: of two submissions at once, one insert wins.
        """
        try:
            with transaction.atomic():
                return self.create(token=token, created_by=stored_username(user)), True
        except IntegrityError:
            return self.filter(token=token).first(), False


class BatchCreation(models.Model):
    """One submission of the create form, claimed by its one-time token before anything is sent upstream.

    The unique token makes a double submit (even two requests at once, in different processes) create one batch:
    the second submission finds the claim and is sent to the batch the first one created.
    """

    token = models.UUIDField(unique=True)
    created_by = models.CharField(max_length=USERNAME_LENGTH, blank=True)
    claimed_at = models.DateTimeField(default=timezone.now)
    input_file_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    batch_id = models.CharField(max_length=services.ID_LENGTH, blank=True)

    objects = BatchCreationQuerySet.as_manager()

    def __str__(self):
        return f"{self.token} → {self.batch_id or 'pending'}"


class ReactionState(models.TextChoices):
    PENDING = "pending", "waiting"
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "failed"


class Reaction(models.Model):
    """One step that must follow a batch's recorded state (keep its results, retry it), run exactly once.

    The unique (batch, step, attempt) makes scheduling it twice a no-op; a conditional UPDATE claims it for one worker
    at a time (`tries` counts the claims, and names the one that holds it); a worker that dies leaves a lease that
    expires. See batches.reactions.
    """

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="reactions")
    step = models.CharField(max_length=64)
    attempt = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=8, choices=ReactionState.choices, default=ReactionState.PENDING)
    tries = models.PositiveSmallIntegerField(default=0)
    # Not run before this (backoff after a failure, or a body that asked to wait).
    run_after = models.DateTimeField(default=timezone.now)
    # When its task was last put on the queue: a pending reaction whose task was lost is enqueued again by sweep().
    enqueued_at = models.DateTimeField(default=timezone.now)
    # While running: the claim is the worker's until then; renewed by long bodies.
    lease_until = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "step", "attempt"], name="reaction_unique_step"),
        ]
        indexes = [
            models.Index(fields=["state", "run_after"], name="reaction_state_due"),
            models.Index(fields=["state", "finished_at"], name="reaction_state_finished"),
        ]

    def __str__(self):
        return f"{self.step} of batch #{self.batch_id} (attempt {self.attempt}): {self.state}"


class Preference(models.Model):
    """A user's own settings that outlive a session: their time zone (copied into the session at login, so that
    pages read the session and never this table)."""

    user = models.OneToOneField("auth.User", on_delete=models.CASCADE, related_name="batchboard_preference")
    time_zone = models.CharField(max_length=64, blank=True)

    def __str__(self):
        return f"preferences of {self.user}"


class SavedViewQuerySet(models.QuerySet):
    def visible_to(self, user):
        """A user's own saved views and those shared with a team (group) they belong to."""
        return self.filter(Q(owner=user) | Q(team__in=user.groups.all())).select_related("owner", "team")


class SavedView(models.Model):
    """A named link to the list or a results page with its filters, search and sort, shown in the navigation of its
    owner and, if shared, of every member of its team. `url` is a path and query the dashboard itself made and
    checked (see batches.views.saved_views)."""

    owner = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="batchboard_saved_views")
    name = models.CharField(max_length=80)
    url = models.CharField(max_length=1000)
    team = models.ForeignKey("auth.Group", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = SavedViewQuerySet.as_manager()

    class Meta:
        ordering = ["name", "pk"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="saved_view_unique_name")]

    def __str__(self):
        return self.name

    @property
    def batch_id(self) -> str:
        """The batch its address names ("" for none): a results page's, or the list's `job` filter's."""
        path, _, query = self.url.partition("?")
        try:
            match = resolve(path)
        except Resolver404:
            return ""
        return match.kwargs.get("batch_id") or QueryDict(query).get("job", "")
