"""What the list page's tests read of its HTML, and how they sign in and move a batch on: one way for every module."""

import re

from django.test import Client

from batches import services
from batches.models import record_batch


def row_of(html: str, batch_id: str) -> str:
    """The list's row of `batch_id`."""
    match = re.search(rf'<tr id="row-{batch_id}".*?</tr>', html, re.S)
    assert match, f"no row for {batch_id}"
    return match.group(0)


def chip_count(html: str, status: str) -> int:
    """The count on the status filter's chip of `status` (or active, attention, failed_lines)."""
    match = re.search(rf'id="status-chip-{status}"[^>]*>[^<]*<span class="count">([\d,]+)</span>', html)
    assert match, f"no status chip for {status}"
    return int(match.group(1).replace(",", ""))


def logged_in(user) -> Client:
    """A client of its own, signed in as `user`."""
    client = Client()
    client.force_login(user)
    return client


def recorded(data: dict, **fields) -> None:
    """The API moved the batch on (`fields`), and a refresh (the sync loop's, a page's) recorded it."""
    data.update(fields)
    record_batch(services.ApiBatch.from_api(data))
