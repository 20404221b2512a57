"""The connections of the configuration (the connections file and the single-key settings), written to the database.

Where it runs, and why there: every process must agree on the connections, and processes start in any order on any
machine (gunicorn workers, sync loops, task workers). The file is checked when the settings load, so a process with a
bad file never starts. Then `apply_connection_file()` runs

- after `migrate` (a post_migrate receiver), so that a deploy's migrate step leaves the rows right before anything
  serves; and
- once in each process before it first reads connections (`ensure_applied()`, a per-process flag checked by
  batches.access.connections for pages, ConnectionQuerySet.syncing for the sync loop and Connection.upstream for
  every upstream call), so that a process started with a changed file, without a migrate, applies it too.

Applying is idempotent (it writes only what differs) and safe when processes run it at once: slugs are unique, a
creation that loses the race is read back, and group grants are set in savepoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import DatabaseError, IntegrityError, transaction

from batches import connection_file
from batches.models import DEFAULT_CONNECTION, Connection, ConnectionSource

logger = logging.getLogger("batches.connections")

_GRANTS = ("view_teams", "cancel_teams", "create_teams")
# The configuration this process last applied (see ensure_applied); None until it has.
_applied_for: tuple[str, bool] | None = None


@dataclass
class Applied:
    """What one application changed, for logs and tests."""

    created: int = 0
    updated: int = 0
    unconfigured: int = 0


def default_is_configured() -> bool:
    """The single-key settings define a connection when OPENAI_API_KEY is set, or in sandbox mode (neither a key nor
    a connections file). Otherwise the default connection stays for its history, unconfigured."""
    return bool(settings.OPENAI_API_KEY) or not settings.BATCHBOARD_CONNECTIONS


def _configuration() -> tuple[str, bool]:
    """What the rows depend on. Without a file the key does not matter: the default connection is configured."""
    path = settings.BATCHBOARD_CONNECTIONS
    return (path, bool(path and settings.OPENAI_API_KEY))


def ensure_applied() -> bool:
    """Apply the configuration once per process (again if the settings change, as tests do). True when it ran now.
    Cheap after the first call: a comparison of two settings."""
    global _applied_for
    configuration = _configuration()
    if _applied_for == configuration:
        return False
    _applied_for = configuration  # first, so that a read of connections while applying does not apply again
    try:
        apply_connection_file()
    except connection_file.ConnectionFileError as exc:
        # The file was checked at startup; it changed since. The rows keep the last good definition until a restart.
        logger.error("The connections file was not applied: %s", exc)
    except DatabaseError as exc:
        _applied_for = None  # try again at the next read (a database not migrated yet, one that went away)
        logger.error("The connections file was not applied: database error: %s", exc)
    return True


def forget_applied() -> tuple[str, bool] | None:
    """The next ensure_applied() applies again (for tests). Returns what was applied, for restore_applied()."""
    global _applied_for
    applied, _applied_for = _applied_for, None
    return applied


def restore_applied(applied: tuple[str, bool] | None) -> None:
    """Mark `applied` (from forget_applied()) as this process's: a test whose database changes were rolled back."""
    global _applied_for
    _applied_for = applied


def apply_connection_file() -> Applied:
    """Write the file's connections and the default connection's state to the database. Raises ConnectionFileError
    for a file that cannot be used."""
    global _applied_for
    specs = connection_file.load(settings.BATCHBOARD_CONNECTIONS) if settings.BATCHBOARD_CONNECTIONS else ()
    applied = Applied()
    with transaction.atomic():
        _apply_default(applied)
        for spec in specs:
            _apply_spec(spec, applied)
        applied.unconfigured += (
            Connection.objects.filter(source=ConnectionSource.FILE, configured=True)
            .exclude(slug__in=[spec.slug for spec in specs])
            .update(configured=False)
        )
    _applied_for = _configuration()
    if applied.created or applied.updated or applied.unconfigured:
        logger.info(
            "Connections applied from %s: %d created, %d updated, %d no longer configured.",
            settings.BATCHBOARD_CONNECTIONS or "the OPENAI_* settings",
            applied.created,
            applied.updated,
            applied.unconfigured,
        )
    return applied


def _apply_default(applied: Applied) -> None:
    configured = default_is_configured()
    changed = (
        Connection.objects.filter(slug=DEFAULT_CONNECTION).exclude(configured=configured).update(configured=configured)
    )
    applied.updated += changed
    if not changed and not Connection.objects.filter(slug=DEFAULT_CONNECTION).exists():
        _create(
            DEFAULT_CONNECTION,
            {
                "name": DEFAULT_CONNECTION,
                "source": ConnectionSource.SETTINGS,
                "open_to_everyone": True,
                "configured": configured,
            },
        )


def _fields(spec: connection_file.ConnectionSpec) -> dict:
    """The row's columns as the file defines them. Keys stay in the environment: the stored secrets are cleared (a
    connection made in the admin and then moved into the file under its slug keeps its history, not its key)."""
    return {
        "name": spec.name,
        "kind": spec.kind,
        "source": ConnectionSource.FILE,
        "base_url": spec.base_url,
        "api_key_env": spec.api_key_env,
        "api_key_encrypted": "",
        "organization": spec.organization,
        "project": spec.project,
        "webhook_secret_env": spec.webhook_secret_env,
        "webhook_secret_encrypted": "",
        "budget_per_minute": spec.budget_per_minute,
        "monthly_budget": spec.monthly_budget,
        "archive": spec.archive,
        "paused": spec.paused,
        "configured": True,
        "open_to_everyone": False,
    }


def _apply_spec(spec: connection_file.ConnectionSpec, applied: Applied) -> None:
    fields = _fields(spec)
    connection = Connection.objects.filter(slug=spec.slug).first()
    created = False
    if connection is None:
        connection, created = _create(spec.slug, fields)
        applied.created += created
    if connection.source == ConnectionSource.ADMIN:
        logger.warning("Connection %r, made in the admin, is now defined by the connections file.", spec.slug)
    stale = [name for name, value in fields.items() if getattr(connection, name) != value]
    if stale:
        for name in stale:
            setattr(connection, name, fields[name])
        connection.save(update_fields=stale)
        applied.updated += 1
    if _grant(connection, spec) and not stale and not created:
        applied.updated += 1


def _create(slug: str, fields: dict) -> tuple[Connection, bool]:
    """The row, made now or (when another process made it a moment ago) read back."""
    try:
        with transaction.atomic():
            return Connection.objects.create(slug=slug, **fields), True
    except IntegrityError:
        return Connection.objects.get(slug=slug), False


def _grant(connection: Connection, spec: connection_file.ConnectionSpec) -> bool:
    """Each grant set to exactly the file's teams, groups made when missing. True when a grant changed."""
    groups = _groups(spec.teams)
    changed = False
    for grant in _GRANTS:
        wanted = {groups[name] for name in getattr(spec, grant)}
        if set(getattr(connection, grant).values_list("pk", flat=True)) == wanted:
            continue
        changed = True
        try:
            with transaction.atomic():
                getattr(connection, grant).set(wanted)
        except IntegrityError:  # another process added the same grant at the same moment: it is there now
            pass
    return changed


def _groups(names: tuple[str, ...]) -> dict[str, int]:
    """{name: group id}, the missing groups made (one query when they all exist)."""
    found = dict(Group.objects.filter(name__in=names).values_list("name", "pk"))
    for name in names:
        if name not in found:
            try:
                with transaction.atomic():
                    found[name] = Group.objects.create(name=name).pk
            except IntegrityError:  # made by another process a moment ago
                found[name] = Group.objects.get(name=name).pk
    return found
