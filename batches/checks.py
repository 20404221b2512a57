"""System checks for an installation that runs but will surprise its operator."""

from django.conf import settings
from django.core.checks import Warning, register


@register()
def secret_key_is_kept(app_configs, **kwargs):
    if not settings.SECRET_KEY_IS_TEMPORARY:
        return []
    return [
        Warning(
            "No DJANGO_SECRET_KEY and no var/secret_key: this process made up a key of its own, so sessions end "
            "when it restarts and other processes cannot read them.",
            hint="Set DJANGO_SECRET_KEY, or run `manage.py ensure_secret_key` once (`make run` does).",
            id="batchboard.W001",
        )
    ]
