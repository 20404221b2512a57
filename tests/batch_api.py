"""A stateful Batch API for the view tests, served by tests.fake_api.FakeApi: list, retrieve and a counted cancel."""

from __future__ import annotations

import copy
import threading
import time
from functools import partial
from itertools import count

from batches import services
from batches.models import record_batch
from tests.fake_api import FakeApi, Reply, example

_numbers = count(1)


def payload(status: str = "in_progress", **fields) -> dict:
    """A batch as the API sends it, from the example of that status, with a fresh id unless `id` is given."""
    data = copy.deepcopy(example(f"batch.{status}.json"))
    data["id"] = f"batch_test{next(_numbers):06d}"
    data["created_at"] = fields.pop("created_at", int(time.time()) - 60)
    data["expires_at"] = data["created_at"] + 86_400
    for field in services.TIMESTAMP_FIELDS[1:]:
        if data.get(field):
            data[field] = data["created_at"] + 5
    data.update(fields)
    return data


class BatchApi:
    """Holds batch payloads and answers for them; every cancel is logged in `cancels` (a list of batch ids).

    `cancel_reply`, when set, answers every cancel instead (to script an upstream failure); `cancel_delay` holds
    each cancel for that many seconds (so concurrent clicks overlap).
    """

    def __init__(self, server: FakeApi):
        self.server = server
        self.batches: dict[str, dict] = {}
        self.cancels: list[str] = []
        self.cancel_reply: Reply | None = None
        self.cancel_delay = 0.0
        self.list_reply: Reply | None = None
        self._lock = threading.Lock()
        server.route("GET", "/batches", self._list)

    def add(self, status: str = "in_progress", *, record: bool = True, **fields) -> dict:
        """A batch known to the API and, unless record=False, already in the dashboard's cache."""
        data = payload(status, **fields)
        self.batches[data["id"]] = data
        self.server.route("GET", f"/batches/{data['id']}", partial(self._retrieve, data["id"]))
        self.server.route("POST", f"/batches/{data['id']}/cancel", partial(self._cancel, data["id"]))
        if record:
            record_batch(services.ApiBatch.from_api(data))
        return data

    def _list(self, received) -> Reply:
        if self.list_reply is not None:
            return self.list_reply
        limit = int(received.query.get("limit", ["20"])[0])
        after = received.query.get("after", [None])[0]
        with self._lock:
            newest = sorted(self.batches.values(), key=lambda b: (b["created_at"], b["id"]), reverse=True)
        if after:
            ids = [b["id"] for b in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        page = newest[:limit]
        return Reply(body={"object": "list", "data": page, "has_more": len(newest) > limit})

    def _retrieve(self, batch_id: str, received) -> Reply:
        with self._lock:
            return Reply(body=self.batches[batch_id])

    def _cancel(self, batch_id: str, received) -> Reply:
        with self._lock:
            self.cancels.append(batch_id)
        if self.cancel_delay:
            time.sleep(self.cancel_delay)
        if self.cancel_reply is not None:
            return self.cancel_reply
        with self._lock:
            data = self.batches[batch_id]
            if services.is_terminal(data["status"]):
                error = example("error.409.cancel_terminal_batch.json")
                error["error"]["message"] = f"Cannot cancel a batch with status '{data['status']}'."
                return Reply(409, error, headers={"x-should-retry": "false"})
            data.update(status="cancelling", cancelling_at=int(time.time()))
            return Reply(body=data)
