"""Make a personal access token for automation and print it (the only time it is shown)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api.forms import expiry_in
from api.models import MAX_LIFETIME, SCOPES, ApiToken


class Command(BaseCommand):
    help = "Make an API token for a user and print it; it is stored hashed and cannot be shown again."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="The username the token acts as.")
        parser.add_argument("--scopes", required=True, help=f"Comma-separated, of: {', '.join(SCOPES)}.")
        parser.add_argument("--name", required=True, help="What uses it; the audit log names it.")
        parser.add_argument("--expires-days", type=int, default=90, help="1 to 365 (default 90).")

    def handle(self, *args, user, scopes, name, expires_days, **options):
        try:
            owner = get_user_model().objects.get_by_natural_key(user)
        except get_user_model().DoesNotExist:
            raise CommandError(f"There is no user {user!r}.") from None
        if not owner.is_active:
            raise CommandError(f"The user {user!r} is inactive.")
        chosen = [scope.strip() for scope in scopes.split(",") if scope.strip()]
        unknown = sorted(set(chosen) - set(SCOPES))
        if unknown or not chosen:
            raise CommandError(f"Scopes are some of {', '.join(SCOPES)}; got {scopes!r}.")
        if not 1 <= expires_days <= MAX_LIFETIME.days:
            raise CommandError(f"--expires-days is between 1 and {MAX_LIFETIME.days}.")
        name = name.strip()
        if not name or len(name) > 60 or not name.isprintable():
            raise CommandError("--name is 1 to 60 printable characters.")
        token, secret = ApiToken.make(owner, name=name, scopes=chosen, expires_at=expiry_in(expires_days))
        self.stderr.write(f"Token {token.name!r} for {owner.get_username()}, expires {token.expires_at:%Y-%m-%d}:")
        self.stdout.write(secret)
