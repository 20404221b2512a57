"""One migrated test database per pytest-xdist run, copied by each worker.

Each worker of `pytest -n 2` used to make its test database by running every migration (2-3 s of CPU per worker,
and as much of PostgreSQL's). The first worker to need a database now migrates a template (the migrations still run,
once per run); every worker then copies it: a file copy on SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL. The
last worker to finish drops the template. Runs without xdist make their database as Django does.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db.backends.base.creation import BaseDatabaseCreation

_create_test_db = BaseDatabaseCreation.create_test_db
_destroy_test_db = BaseDatabaseCreation.destroy_test_db


def _run_and_worker() -> tuple[str | None, str | None]:
    return os.environ.get("PYTEST_XDIST_TESTRUNUID"), os.environ.get("PYTEST_XDIST_WORKER")


@contextmanager
def _shared_state(run: str, alias: str):
    """The run's record of its template ({"made": bool, "users": int}), read and written under a lock that the
    workers take in turn."""
    path = Path(tempfile.gettempdir()) / f"batchboard-test-template-{run[:16]}-{alias}.json"
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        if os.fstat(descriptor).st_nlink:
            break
        os.close(descriptor)  # removed by the last user while this worker waited: a new record
    try:
        with os.fdopen(os.dup(descriptor), "r+") as file:
            state = json.loads(file.read() or "{}")
            yield state
            if state.get("users", 0) <= 0:
                path.unlink()
            else:
                file.seek(0)
                file.truncate()
                file.write(json.dumps(state))
    finally:
        os.close(descriptor)


def _template_name(creation: BaseDatabaseCreation, run: str) -> str:
    if creation.connection.vendor == "sqlite":
        return str(Path(tempfile.gettempdir()) / f"batchboard-test-{run[:16]}.sqlite3")
    return f"test_batchboard_{run[:16]}"


def create_test_db(self, verbosity=1, autoclobber=False, serialize=None, keepdb=False):
    run, worker = _run_and_worker()
    test_settings = self.connection.settings_dict["TEST"]
    if (
        run is None
        or worker is None
        or keepdb
        or serialize
        or test_settings.get("MIGRATE") is False
        or self.connection.vendor not in ("sqlite", "postgresql")
    ):
        return _create_test_db(self, verbosity, autoclobber, serialize, keepdb)
    template = _template_name(self, run)
    with _shared_state(run, self.connection.alias) as state:
        if not state.get("made"):
            worker_name = test_settings["NAME"]
            test_settings["NAME"] = template
            try:
                _create_test_db(self, verbosity, autoclobber=True, keepdb=False)
            finally:
                test_settings["NAME"] = worker_name
            state["made"] = True
        self.connection.close()
        self.connection.settings_dict["NAME"] = template
        self._clone_test_db(worker, verbosity, keepdb=False)
        state["users"] = state.get("users", 0) + 1
    name = self.get_test_db_clone_settings(worker)["NAME"]
    self.connection.close()
    settings.DATABASES[self.connection.alias]["NAME"] = name
    self.connection.settings_dict["NAME"] = name
    self.connection.test_template_name = template
    self.connection.ensure_connection()
    return name


def destroy_test_db(self, old_database_name=None, verbosity=1, keepdb=False, suffix=None):
    _destroy_test_db(self, old_database_name, verbosity, keepdb, suffix)
    template = getattr(self.connection, "test_template_name", None)
    run, _worker = _run_and_worker()
    if template is None or run is None:
        return
    del self.connection.test_template_name
    with _shared_state(run, self.connection.alias) as state:
        state["users"] = state.get("users", 0) - 1
        if state["users"] <= 0:
            self._destroy_test_db(template, verbosity)


BaseDatabaseCreation.create_test_db = create_test_db
BaseDatabaseCreation.destroy_test_db = destroy_test_db
