"""Batch prices per model and the cost of token usage, in exact decimal dollars.

The table ships in batches/data/prices.toml; an operator's file named by BATCHBOARD_PRICES replaces or adds entries
model by model. This module imports nothing from Django at import time: the settings module calls `load_price_file`
to reject a bad file at startup.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

SHIPPED_PRICES = Path(__file__).resolve().parent / "data" / "prices.toml"
PRICES_SETTING = "BATCHBOARD_PRICES"
TOKENS_PER_PRICE_UNIT = 1_000_000
PRICE_FIELDS = ("input", "cached_input", "output")
# A snapshot suffix: -2024-07-18 (current style) or a month and day, -0613 or -1106 (older style).
DATED_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|[01]\d[0-3]\d)$")
# Bounds on a price in a price file, in dollars per million tokens: far above any model's, and fine enough for any
# rate, yet small enough that every cost, total and amount shown stays exact (a price of 1e999999999 overflowed).
MAX_PRICE = Decimal(1_000_000)
PRICE_PLACES = 10
CENT = Decimal("0.01")
SMALL_AMOUNT_STEP = Decimal("0.0001")


class PriceFileError(ValueError):
    """A price file that cannot be used, with a message saying where and why."""


@dataclass(frozen=True)
class Price:
    """What one model costs in a batch, in dollars per TOKENS_PER_PRICE_UNIT tokens."""

    model: str  # the table's entry: the family for a dated name
    input: Decimal
    cached_input: Decimal
    output: Decimal
    source: str  # which file it came from: the shipped table or the operator's

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> Decimal:
        """The cost of this usage. Cached tokens are part of the input tokens, charged at the cached price."""
        parts = self.parts(input_tokens, cached_tokens, output_tokens)
        return sum(tokens * rate for _label, tokens, rate in parts) / TOKENS_PER_PRICE_UNIT

    def parts(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> list[tuple[str, int, Decimal]]:
        """(label, tokens, price) of the uncached input, the cached input and the output of this usage."""
        cached = min(max(cached_tokens, 0), max(input_tokens, 0))
        return [
            ("Input", max(input_tokens, 0) - cached, self.input),
            ("Cached input", cached, self.cached_input),
            ("Output", max(output_tokens, 0), self.output),
        ]


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price]
    source: str
    as_of: str
    override_path: str = ""
    _found: dict[str, Price | None] = field(default_factory=dict, compare=False, repr=False)

    def price_for(self, model: str | None) -> Price | None:
        """The model's own entry, else its family's for a dated name; None when no price is known."""
        if not model:
            return None
        if model not in self._found:  # Remembered: a page prices the same few models many times.
            family = DATED_SUFFIX.sub("", model)
            self._found[model] = self.prices.get(model) or self.prices.get(family)
        return self._found[model]


def load_price_file(path: Path | str) -> tuple[dict[str, Price], dict[str, str]]:
    """({model: Price}, {"source": ..., "as_of": ...}) from a price file; PriceFileError says what is wrong."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle, parse_float=Decimal)
    except FileNotFoundError:
        raise PriceFileError(f"there is no file {path}") from None
    except OSError as exc:
        raise PriceFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"{path} is not valid TOML: {exc}") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise PriceFileError(f'{path} has no [models."name"] tables')
    currency = data.get("currency", "USD")
    if currency != "USD":
        raise PriceFileError(f'{path} gives prices in {currency!r}; batchboard shows US dollars (currency = "USD")')
    about = {"source": str(data.get("source", "")), "as_of": str(data.get("as_of", ""))}
    prices = {name: _price(path, name, entry) for name, entry in models.items()}
    return prices, about


def _price(path: Path, name: str, entry) -> Price:
    where = f'{path}, [models."{name}"]'
    if not isinstance(entry, dict):
        raise PriceFileError(f"{where} must be a table with input and output prices")
    unknown = sorted(set(entry) - set(PRICE_FIELDS))
    if unknown:
        raise PriceFileError(f"{where} has unknown keys {', '.join(unknown)} (expected {', '.join(PRICE_FIELDS)})")
    for required in ("input", "output"):
        if required not in entry:
            raise PriceFileError(f"{where} has no {required} price")
    values = {key: _amount(where, key, value) for key, value in entry.items()}
    values.setdefault("cached_input", values["input"])
    return Price(model=name, source=str(path), **values)


def _amount(where: str, key: str, value) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise PriceFileError(f"{where}: {key} must be a number of dollars per million tokens")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise PriceFileError(f"{where}: {key} = {value!r} is not a number") from None
    if not amount.is_finite() or not 0 <= amount <= MAX_PRICE:
        raise PriceFileError(
            f"{where}: {key} = {value!r} must be zero or more and at most {MAX_PRICE:,} (dollars per million tokens)"
        )
    if amount.as_tuple().exponent < -PRICE_PLACES:
        raise PriceFileError(f"{where}: {key} = {value!r} has more than {PRICE_PLACES} decimal places")
    return amount


@functools.cache
def _table(override_path: str) -> PriceTable:
    prices, about = load_price_file(SHIPPED_PRICES)
    if override_path:
        extra, extra_about = load_price_file(override_path)
        prices = {**prices, **extra}
        about = {key: " · ".join(v for v in (about[key], extra_about[key]) if v) for key in about}
    shown_path = str(Path(override_path)) if override_path else ""
    return PriceTable(prices=prices, source=about["source"], as_of=about["as_of"], override_path=shown_path)


def price_table() -> PriceTable:
    """The prices in effect: the shipped table with the operator's file (BATCHBOARD_PRICES) over it."""
    from django.conf import settings

    return _table(str(settings.BATCHBOARD_PRICES or ""))


def price_for(model: str | None) -> Price | None:
    return price_table().price_for(model)


def usage_cost(model: str | None, input_tokens: int | None, cached_tokens: int | None, output_tokens: int | None):
    """The cost of a batch's usage, or None when the API reported no usage or the model has no known price."""
    if input_tokens is None and output_tokens is None:
        return None
    price = price_for(model)
    if price is None:
        return None
    return price.cost(input_tokens or 0, cached_tokens or 0, output_tokens or 0)


@dataclass(frozen=True)
class CostLine:
    label: str
    tokens: int
    price: Decimal  # per TOKENS_PER_PRICE_UNIT tokens
    amount: Decimal


def cost_lines(price: Price, input_tokens: int, cached_tokens: int, output_tokens: int) -> list[CostLine]:
    """How a cost adds up, line by line (uncached input, cached input, output), for the detail page."""
    parts = price.parts(input_tokens, cached_tokens, output_tokens)
    return [CostLine(label, tokens, rate, tokens * rate / TOKENS_PER_PRICE_UNIT) for label, tokens, rate in parts]


@dataclass(frozen=True)
class CostTotal:
    """The cost of a set of batches, and how many of them could not be priced (their model has no known price).

    `amount` is then a lower bound: pages say how many batches it leaves out instead of guessing their cost.
    """

    amount: Decimal = Decimal(0)
    batches: int = 0
    unpriced_batches: int = 0
    unpriced_models: tuple[str, ...] = ()

    @classmethod
    def of(cls, rows) -> CostTotal:
        """Total the rows of an aggregate grouped by model: {model, batches, input_tokens, cached_input_tokens,
        output_tokens}."""
        amount, batches, unpriced, unpriced_models = Decimal(0), 0, 0, set()
        for row in rows:
            if not row["batches"] or not any(
                row[name] for name in ("input_tokens", "cached_input_tokens", "output_tokens")
            ):
                continue  # no token used (a batch that failed validation): it cost nothing, priced or not
            batches += row["batches"]
            price = price_for(row["model"])
            if price is None:
                unpriced += row["batches"]
                unpriced_models.add(row["model"] or "unknown model")
                continue
            amount += price.cost(row["input_tokens"] or 0, row["cached_input_tokens"] or 0, row["output_tokens"] or 0)
        return cls(amount, batches, unpriced, tuple(sorted(unpriced_models)))

    @property
    def complete(self) -> bool:
        return not self.unpriced_batches

    def __add__(self, other: CostTotal) -> CostTotal:
        """The cost of two disjoint sets of batches (two connections' spend, say)."""
        return CostTotal(
            self.amount + other.amount,
            self.batches + other.batches,
            self.unpriced_batches + other.unpriced_batches,
            tuple(sorted({*self.unpriced_models, *other.unpriced_models})),
        )


def format_money(amount: Decimal) -> str:
    """Dollars for people: cents from a cent up, four decimals below (a small batch costs fractions of a cent)."""
    if amount and abs(amount) < CENT:
        return f"${amount.quantize(SMALL_AMOUNT_STEP, rounding=ROUND_HALF_UP)}"
    return f"${amount.quantize(CENT, rounding=ROUND_HALF_UP):,}"
