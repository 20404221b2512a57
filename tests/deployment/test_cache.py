"""The shared cache: what one process stores another reads, on the database cache (the default) and on a real Redis
(REDIS_URL), so several gunicorn workers agree on the list's figures and file sizes."""

import subprocess
import sys

import pytest
import redis
from django.core.cache.backends.db import DatabaseCache
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches.freshness import LIST_STATE
from batches.models import SyncState
from batches.views.listing import TABLE_RENDERINGS
from tests.conftest import process_environment
from tests.fake_api import Reply

STORE = "from django.core.cache import cache; cache.set('written-by', 'another process', 60)"


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_a_value_one_process_caches_is_read_by_another(backend, database_url, request):
    extra = {"REDIS_URL": request.getfixturevalue("redis_url")} if backend == "redis" else {}

    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", STORE],
        env=process_environment(database_url, **extra),
        cwd=str(request.config.rootpath),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    # The same cache as that process's settings make it (the tests' own cache has a key prefix per test).
    if backend == "redis":
        cache = RedisCache(extra["REDIS_URL"], {"KEY_PREFIX": "batchboard"})
    else:
        cache = DatabaseCache("batchboard_cache", {})
    assert cache.get("written-by") == "another process"


@pytest.fixture
def fresh_list(settings):
    settings.BATCHBOARD_REFRESH_INTERVAL = 3600.0
    now = timezone.now()
    SyncState.objects.create(name=LIST_STATE, claimed_at=now, succeeded_at=now)


@pytest.mark.django_db
def test_the_lists_figures_are_computed_once_into_redis_for_every_worker(redis_cache, fresh_list, viewer_client):
    headers = {"HX-Request": "true"}
    with CaptureQueriesContext(connection) as first:
        rendered = viewer_client.get("/batches/", headers=headers)
    TABLE_RENDERINGS.clear()  # another worker: renderings of its own, the same shared cache
    with CaptureQueriesContext(connection) as second:
        again = viewer_client.get("/batches/", headers=headers)

    assert again.content == rendered.content
    assert len(second) < len(first)  # the final batches' figures read from Redis, not computed again
    assert redis.Redis.from_url(redis_cache).keys("*batchboard:list-settled:*")
    assert not redis.Redis.from_url(redis_cache).keys("*batchboard:list-table:*")  # renderings stay in each process


@pytest.mark.django_db
def test_a_file_size_is_asked_upstream_once_whichever_worker_shows_it(redis_cache, viewer_client, api):
    batch = api.add("completed", output_file_id="file-out")
    file = {"id": "file-out", "object": "file", "bytes": 2048, "created_at": 1_760_000_000, "filename": "out.jsonl"}
    api.server.script("GET", "/files/file-out", Reply(200, {**file, "purpose": "batch_output"}))

    for _ in range(3):
        assert viewer_client.get(f"/batches/{batch['id']}/").status_code == 200

    assert len(api.server.requests_to("GET", "/files/file-out")) == 1
    assert redis.Redis.from_url(redis_cache).keys("*batchboard:file-bytes:*file-out")
