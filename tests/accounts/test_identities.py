"""accounts.identities on its own: the same subject signing in twice at once makes one user, and a sign-in's queries
do not grow with the number of groups once they exist."""

import threading

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from accounts.claims import identity_from_claims
from accounts.identities import sign_in
from accounts.models import OidcIdentity


def _identity(groups=(), sub="sub-1", username="ada"):
    claims = {"sub": sub, "preferred_username": username, "groups": list(groups)}
    return identity_from_claims("https://sso.example.com", claims, "groups")


@pytest.mark.django_db(transaction=True)
def test_two_first_sign_ins_of_one_subject_at_once_make_one_user():
    start = threading.Barrier(2)
    users, errors = [], []

    def run():
        try:
            start.wait(timeout=10)
            users.append(sign_in(_identity(["ops"])).pk)
        except Exception as exc:  # reported by the assertion below
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(set(users)) == 1
    assert User.objects.count() == 1 and OidcIdentity.objects.count() == 1


@pytest.mark.django_db
def test_a_repeat_sign_in_costs_the_same_queries_for_one_group_or_a_hundred():
    few = [f"team-{number}" for number in range(1)]
    many = [f"team-{number}" for number in range(100)]
    sign_in(_identity(few, sub="a", username="a"))
    sign_in(_identity(many, sub="b", username="b"))
    with CaptureQueriesContext(connection) as one:
        sign_in(_identity(few, sub="a", username="a"))
    with CaptureQueriesContext(connection) as hundred:
        sign_in(_identity(many, sub="b", username="b"))
    assert len(hundred) == len(one) <= 12
    assert User.objects.get(username="b").groups.count() == 100
