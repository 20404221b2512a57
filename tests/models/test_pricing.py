"""The price table: shipped prices, family fallback for dated names, the operator's override file, usage cost."""

from decimal import Decimal

import pytest

from batches import pricing
from batches.pricing import PriceFileError, format_money, load_price_file, price_for, usage_cost

# Prices and costs are arithmetic on a price table: a second database changes nothing.
pytestmark = pytest.mark.once


@pytest.fixture
def override(settings, tmp_path):
    """Point BATCHBOARD_PRICES at a file the test writes."""
    path = tmp_path / "prices.toml"

    def write(text: str):
        path.write_text(text)
        settings.BATCHBOARD_PRICES = str(path)
        return path

    return write


def test_it_ships_a_dated_table_that_states_its_source():
    table = pricing.price_table()
    assert table.as_of and "pricing" in table.source.lower()
    assert table.override_path == ""
    text = pricing.SHIPPED_PRICES.read_text()
    assert "half the standard price" in text and "check them" in text


def test_it_prices_every_shipped_model_in_decimals():
    for price in pricing.price_table().prices.values():
        assert all(isinstance(getattr(price, name), Decimal) for name in pricing.PRICE_FIELDS)
        assert price.cached_input <= price.input


def test_it_finds_a_model_by_its_exact_name():
    price = price_for("gpt-4o-mini")
    assert (price.input, price.cached_input, price.output) == (Decimal("0.075"), Decimal("0.0375"), Decimal("0.30"))


@pytest.mark.parametrize(
    ("model", "family"),
    [("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("gpt-4.1-2025-04-14", "gpt-4.1"), ("gpt-4-0613", "gpt-4")],
)
def test_it_falls_back_from_a_dated_name_to_its_family(model, family):
    assert price_for(model) == price_for(family)
    assert price_for(model).model == family


def test_a_dated_name_with_its_own_entry_keeps_it():
    assert price_for("gpt-4o-2024-05-13").input == Decimal("2.50")
    assert price_for("gpt-4o-2024-08-06").input == Decimal("1.25")


@pytest.mark.parametrize(
    "model", ["my-own-model", "ft:gpt-4o-mini-2024-07-18:acme::abc123", "gpt-4o-mini-tts", "", None, "gpt-4o-mini-2024"]
)
def test_it_knows_no_price_rather_than_guess_one(model):
    assert price_for(model) is None
    assert usage_cost(model, 1000, 0, 1000) is None


def test_cost_from_usage_charges_cached_tokens_at_the_cached_price():
    # gpt-4o-mini batch: input 0.075, cached 0.0375, output 0.30 per million tokens.
    cost = usage_cost("gpt-4o-mini-2024-07-18", 1_000_000, 400_000, 500_000)
    assert cost == Decimal("0.6") * Decimal("0.075") + Decimal("0.4") * Decimal("0.0375") + Decimal("0.15")
    assert cost == Decimal("0.21")


def test_cost_is_exact_for_small_counts():
    assert usage_cost("gpt-4o-mini", 3, 0, 7) == Decimal("0.000002325")


def test_cached_tokens_without_a_cached_price_are_charged_as_input():
    price = price_for("gpt-4-turbo")
    assert price.cached_input == price.input
    assert usage_cost("gpt-4-turbo", 1000, 1000, 0) == usage_cost("gpt-4-turbo", 1000, 0, 0)


def test_no_usage_reported_has_no_cost():
    assert usage_cost("gpt-4o-mini", None, None, None) is None
    assert usage_cost("gpt-4o-mini", 0, 0, 0) == 0


def test_the_override_file_replaces_and_extends_the_shipped_table(override):
    override(
        'source = "our contract"\nas_of = "2026-11"\n'
        '[models."gpt-4o-mini"]\ninput = "0.05"\noutput = "0.2"\n'
        '[models."acme-large"]\ninput = 2\ncached_input = 0.5\noutput = 8\n'
    )
    assert price_for("gpt-4o-mini-2024-07-18").input == Decimal("0.05")
    assert price_for("gpt-4o-mini").cached_input == Decimal("0.05")  # none given: cached input costs input
    assert price_for("acme-large-2026-01-02").output == Decimal("8")
    assert price_for("gpt-4o").input == Decimal("1.25")  # untouched entries stay
    table = pricing.price_table()
    assert "our contract" in table.source and "2026-11" in table.as_of
    assert table.override_path.endswith("prices.toml")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("models = 3", "no [models"),
        ('[models."m"]\ninput = 1\n', "no output price"),
        ('[models."m"]\ninput = -1\noutput = 1\n', "zero or more"),
        ('[models."m"]\ninput = "1,5"\noutput = 1\n', "not a number"),
        ('[models."m"]\ninput = 1\noutput = 1\nouptut = 2\n', "unknown keys ouptut"),
        ('[models."m"]\ninput = 1\noutput = "inf"\n', "zero or more"),
        ('currency = "EUR"\n[models."m"]\ninput = 1\noutput = 1\n', "US dollars"),
        ("[models\n", "not valid TOML"),
    ],
)
def test_a_bad_price_file_is_refused_with_a_reason(tmp_path, text, complaint):
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(PriceFileError) as raised:
        load_price_file(path)
    assert str(path) in str(raised.value) and complaint in str(raised.value)


def test_floats_in_a_price_file_are_read_as_exact_decimals(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models."m"]\ninput = 0.1\noutput = 0.3\n')
    prices, _ = load_price_file(path)
    assert prices["m"].input == Decimal("0.1") and prices["m"].output == Decimal("0.3")


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("1234.567"), "$1,234.57"),
        (Decimal("0.125"), "$0.13"),
        (Decimal("0.01"), "$0.01"),
        (Decimal("0.000002325"), "$0.0000"),
        (Decimal("0.00315"), "$0.0032"),
        (Decimal("0"), "$0.00"),
    ],
)
def test_money_is_shown_to_the_cent_or_finer_below_a_cent(amount, shown):
    assert format_money(amount) == shown


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ('"1e999999999"', "at most 1,000,000"),
        ("1e999999999", "at most 1,000,000"),
        ('"1000000.01"', "at most 1,000,000"),
        ('"-0.5"', "zero or more"),
        ('"NaN"', "zero or more"),
        ('"1e-999999999"', "more than 10 decimal places"),
        ('"0.00000000001"', "more than 10 decimal places"),
    ],
)
def test_finding_8_a_price_out_of_bounds_is_refused_naming_the_model(tmp_path, value, complaint):
    path = tmp_path / "prices.toml"
    path.write_text(f'[models."huge-model"]\ninput = 1\noutput = {value}\n')
    with pytest.raises(PriceFileError) as raised:
        load_price_file(path)
    message = str(raised.value)
    assert '[models."huge-model"]' in message and "output" in message and complaint in message


def test_finding_8_the_largest_price_allowed_still_costs_exactly(override):
    override('[models."dear"]\ninput = "1000000"\ncached_input = "0.0000000001"\noutput = "1E+6"\n')
    tokens = 2**63 - 1  # more than any count the API reports
    cost = usage_cost("dear", tokens, 0, tokens)
    assert cost == Decimal(2 * tokens)
    assert format_money(cost) == f"${2 * tokens:,}.00"
    assert usage_cost("dear", tokens, tokens, 0) == Decimal(tokens) / 10**16
