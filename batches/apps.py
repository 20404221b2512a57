import logging

from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


def _create_cache_table(sender, using, verbosity=1, **kwargs):
    """`migrate` also creates the database cache's table (a no-op with Redis, or when it exists)."""
    call_command("createcachetable", database=using, verbosity=max(verbosity - 1, 0))


def _apply_connections(sender, using, **kwargs):
    """`migrate` leaves the connections as the configuration defines them (batches.configured_connections)."""
    from django.db import DEFAULT_DB_ALIAS, DatabaseError

    from batches.configured_connections import apply_connection_file

    if using != DEFAULT_DB_ALIAS:
        return
    try:
        apply_connection_file()
    except DatabaseError as exc:  # migrated backwards, to before connections existed
        logging.getLogger("batches.connections").warning("The connections were not applied: %s", exc)


class BatchesConfig(AppConfig):
    name = "batches"
    verbose_name = "Batches"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in

        from batches import checks  # noqa: F401  (registers the system checks)
        from batches.middleware import stamp_session
        from batches.views.time_zone import restore_on_login

        user_logged_in.connect(stamp_session, dispatch_uid="batchboard-session-stamp")
        user_logged_in.connect(restore_on_login, dispatch_uid="batchboard-time-zone")
        post_migrate.connect(_create_cache_table, sender=self)
        post_migrate.connect(_apply_connections, sender=self)
