"""Webhooks received from the OpenAI API: one row per delivery (its connection and webhook-id are the replay guard)
and a daily count of the deliveries refused."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone

from batches import services
from batches.models import Connection, default_connection_id

# A delivery's webhook-id is remembered this long: a replay is recognised within it (the signature's timestamp
# tolerance is 5 minutes, so an older replay is refused anyway).
KEPT_FOR = timedelta(days=7)
PRUNE_CHUNK = 1000


class DeliveryState(models.TextChoices):
    RECEIVED = "received", "waiting to be processed"
    PROCESSED = "processed", "processed"
    IGNORED = "ignored", "ignored"
    FAILED = "failed", "failed"


class DeliveryQuerySet(models.QuerySet):
    def prune(self, now: datetime | None = None) -> int:
        """Forget deliveries older than KEPT_FOR, at most PRUNE_CHUNK per call (a later call takes the rest)."""
        cutoff = (now or timezone.now()) - KEPT_FOR
        old = self.filter(received_at__lt=cutoff).order_by("received_at").values_list("pk", flat=True)
        old = list(old[:PRUNE_CHUNK])
        return self.filter(pk__in=old).delete()[0] if old else 0


class Delivery(models.Model):
    """A signed delivery that passed verification, on the URL of one connection. Unique per (connection, webhook_id):
    a replay (or the sender's retry of a delivery already answered) is a no-op. Per connection, not globally: the
    Standard Webhooks id is unique per sender, and each connection is its own sender with its own secret (OpenAI's
    ids are unique everywhere, a gateway's need not be), while a delivery replayed to another connection's URL fails
    that connection's signature. `state` and `tries` are the processing task's own claim and record."""

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="webhook_deliveries", default=default_connection_id
    )
    webhook_id = models.CharField(max_length=200)
    event_id = models.CharField(max_length=200, blank=True)
    event_type = models.CharField(max_length=100)
    # A batch id of the connection's shape (batches.connections.id_shapes), or "" when none was valid.
    batch_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.RECEIVED)
    tries = models.PositiveIntegerField(default=0)
    # While a worker processes it, the end of its lease; while it waits for another try, when that try is due.
    busy_until = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["connection", "webhook_id"], name="webhooks_delivery_once_per_connection")
        ]

    def __str__(self):
        return f"{self.event_type} {self.batch_id or '-'} ({self.webhook_id})"


class Refusals(models.Model):
    """How many deliveries were refused each day on each connection's URL (a bad or missing signature, an old
    timestamp): a count, never the bodies, so a flood of forged requests cannot fill the database. Rows from before
    refusals were counted per connection have none."""

    connection = models.ForeignKey(Connection, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "refusals"
        constraints = [
            models.UniqueConstraint(fields=["connection", "day"], name="webhooks_refusals_once_per_connection_day")
        ]

    def __str__(self):
        return f"{self.day}: {self.count}"

    @classmethod
    def count_one(cls, connection_id: int | None, day: date | None = None) -> None:
        day = day or timezone.now().date()
        today = cls.objects.filter(connection_id=connection_id, day=day)
        if today.update(count=F("count") + 1):
            return
        try:
            with transaction.atomic():
                cls.objects.create(connection_id=connection_id, day=day, count=1)
        except IntegrityError:  # another request created today's row meanwhile
            today.update(count=F("count") + 1)

    @classmethod
    def totals_by_connection(cls) -> dict[int, int]:
        """{connection id: deliveries refused on its URL, ever}, in one grouped query (a row a connection a day)."""
        rows = cls.objects.filter(connection__isnull=False).order_by().values_list("connection_id")
        return dict(rows.annotate(total=models.Sum("count")))
