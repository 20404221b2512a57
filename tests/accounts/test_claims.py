"""The claims a sign-in takes from the provider, normalised where they enter: hostile values are left out, never
fatal, and never more rights than the claim gives."""

import pytest

from accounts.claims import GROUPS_MAX, ClaimsRefused, group_names, identity_from_claims, username_for

# Pure functions of their input: no database can change the outcome.
pytestmark = pytest.mark.once


def test_it_takes_a_list_of_group_names_in_order_without_repeats():
    assert group_names(["ops", "research", "ops"]) == ("ops", "research")


def test_it_takes_one_string_as_one_group():
    assert group_names("ops") == ("ops",)


@pytest.mark.parametrize("value", [None, 7, {"ops": True}, True, ""])
def test_a_missing_or_malformed_claim_means_no_groups(value):
    assert group_names(value) == ()


def test_it_leaves_out_what_is_not_a_usable_name():
    hostile = ["ops", 5, None, {"name": "admin"}, ["nested"], "", "   ", "x" * 151, "a\x00b\nc", " research "]
    assert group_names(hostile) == ("ops", "abc", "research")


def test_it_keeps_at_most_a_bounded_number_of_groups():
    names = group_names([f"team-{number}" for number in range(10_000)])
    assert len(names) == GROUPS_MAX and names[0] == "team-0"


def test_it_reads_a_dotted_claim_path_and_a_claim_named_with_dots():
    claims = {"realm_access": {"roles": ["ops"]}, "https://example.com/groups": ["research"]}
    assert identity_from_claims("i", {"sub": "s", **claims}, "realm_access.roles").groups == ("ops",)
    assert identity_from_claims("i", {"sub": "s", **claims}, "https://example.com/groups").groups == ("research",)


def test_the_user_name_comes_from_preferred_username_then_email():
    assert username_for({"preferred_username": "ada", "email": "ada@example.com"}) == "ada"
    assert username_for({"email": "ada@example.com"}) == "ada@example.com"
    assert username_for({"preferred_username": "Ada Lovelace<script>"}) == "AdaLovelacescript"
    assert username_for({"preferred_username": 42}) == "user"
    assert len(username_for({"preferred_username": "a" * 500})) == 150


@pytest.mark.parametrize("subject", [None, "", 42, "x" * 256, "a\x00b"])
def test_it_refuses_claims_without_a_usable_subject(subject):
    with pytest.raises(ClaimsRefused):
        identity_from_claims("https://issuer", {"sub": subject, "email": "ada@example.com"}, "groups")


def test_it_keeps_an_email_address_only_when_it_is_one():
    assert identity_from_claims("i", {"sub": "s", "email": "not an address"}, "groups").email == ""
    assert identity_from_claims("i", {"sub": "s", "email": ["a@b"]}, "groups").email == ""
    assert identity_from_claims("i", {"sub": "s", "email": "a@example.com"}, "groups").email == "a@example.com"
