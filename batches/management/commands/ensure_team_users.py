"""Make a user per team of the connections file, for trying teams on the sandbox; printed passwords, shown once."""

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand
from django.utils.crypto import get_random_string

from batches import connection_file
from batches.configured_connections import apply_connection_file


class Command(BaseCommand):
    help = (
        "For a connections file whose connections all go to this install's own sandbox (connections.example.toml): "
        "make a user named after each team it grants, in that team, with a random password printed once. "
        "Does nothing for a file with any real upstream: those users come from single sign-on or the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000/", help="Where the dashboard will be served, for the message."
        )

    def handle(self, *args, url, **options):
        if not settings.BATCHBOARD_CONNECTIONS:
            self.stdout.write("No connections file (BATCHBOARD_CONNECTIONS): no team users to make.")
            return
        specs = connection_file.load(settings.BATCHBOARD_CONNECTIONS)
        if not (settings.SANDBOX_ENABLED and all(_is_sandbox(spec.base_url) for spec in specs)):
            self.stdout.write("The connections file names upstreams other than the sandbox: no demo users made.")
            return
        apply_connection_file()  # the teams exist as groups
        users = get_user_model()
        made = []
        for team in dict.fromkeys(team for spec in specs for team in spec.teams):
            user = users.objects.filter(username=team).first()
            if user is None:
                password = get_random_string(20)
                user = users(username=team)
                try:
                    user.full_clean(exclude=["password"])
                except ValidationError:
                    self.stdout.write(f"The team {team!r} is not a valid user name: no user made for it.")
                    continue
                user.set_password(password)
                user.save()
                made.append((team, password))
            user.groups.add(Group.objects.get(name=team))
        if not made:
            self.stdout.write("The team users exist already (`manage.py changepassword NAME` sets a new password).")
            return
        self.stdout.write(self.style.SUCCESS(f"Created a user per team for {url}, each seeing its team's connections:"))
        for username, password in made:
            self.stdout.write(f"    username: {username:<12} password: {password}")
        self.stdout.write("They are shown only this once; change one with `manage.py changepassword NAME`.")


def _is_sandbox(base_url: str) -> bool:
    """Whether the URL is this machine's sandbox (whose keys are public), not an upstream with real batches."""
    parts = urlsplit(base_url)
    return connection_file.is_loopback(parts.hostname or "") and parts.path.startswith("/sandbox/")
