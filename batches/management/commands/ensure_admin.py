"""Create a local admin account on first run, with a random password that is printed once."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.utils.crypto import get_random_string


class Command(BaseCommand):
    help = "Create the user 'admin' with a random password if no superuser exists yet, and print the password."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000/", help="Where the dashboard will be served, for the message."
        )

    def handle(self, *args, username, url, **options):
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            self.stdout.write("An admin account already exists; log in with it (or run `manage.py changepassword`).")
            return
        password = get_random_string(20)
        users.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(self.style.SUCCESS(f"Created a local admin account for {url}"))
        self.stdout.write(f"    username: {username}")
        self.stdout.write(f"    password: {password}")
        self.stdout.write("It is shown only this once; change it with `manage.py changepassword admin`.")
