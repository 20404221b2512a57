"""The connections file (BATCHBOARD_CONNECTIONS): TOML with one [[connection]] table per upstream account, read and
checked here into frozen specs. Pure: no database, no Django models, so that the settings can check the file at
startup (a mistake stops startup with the file and the line) before any app loads. batches.configured_connections
writes the specs to the database.

    [[connection]]
    name = "Research"
    slug = "research"
    kind = "openai"                      # openai | azure | compatible
    base_url = "https://api.openai.com/v1"
    api_key_env = "RESEARCH_OPENAI_KEY"  # the NAME of the variable holding the key, never the key
    project = "proj_..."
    teams = { view = ["research"], cancel = ["research-leads"], create = ["research-leads"] }
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit

KINDS = ("openai", "azure", "compatible")
ARCHIVE_MODES = ("new", "all", "on-open", "off")
TEAM_GRANTS = ("view", "cancel", "create")
# The slug of the connection the OPENAI_* settings define (batches.models.DEFAULT_CONNECTION).
RESERVED_SLUG = "default"
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,49}")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
# Azure OpenAI's v1 API lives under the resource's host (Azure OpenAI or AI Foundry) at /openai/v1/.
AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
AZURE_PATH = "/openai/v1"
MAX_URL_LENGTH = 500
MAX_BUDGET_PER_MINUTE = 1_000_000
MAX_MONTHLY_BUDGET = Decimal("9999999999.99")  # the column's 12 digits, 2 after the point

_KEYS = (
    "name",
    "slug",
    "kind",
    "base_url",
    "api_key_env",
    "organization",
    "project",
    "budget_per_minute",
    "monthly_budget",
    "archive",
    "paused",
    "webhook_secret_env",
    "teams",
)
_REQUIRED = ("name", "slug", "kind", "base_url", "api_key_env")
_SECRET_KEYS = ("api_key", "key", "openai_api_key", "webhook_secret", "secret")


class ConnectionFileError(ValueError):
    """A connections file that cannot be used; its message names the file and the line."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class ConnectionSpec:
    """One [[connection]] table of the file, checked. Teams are group names."""

    name: str
    slug: str
    kind: str
    base_url: str
    api_key_env: str
    organization: str = ""
    project: str = ""
    budget_per_minute: int | None = None
    monthly_budget: Decimal | None = None
    archive: str = ""
    paused: bool = False
    webhook_secret_env: str = ""
    view_teams: tuple[str, ...] = ()
    cancel_teams: tuple[str, ...] = ()
    create_teams: tuple[str, ...] = ()
    line: int = 0  # of its [[connection]] header

    @property
    def teams(self) -> tuple[str, ...]:
        """Every team it grants something to, each once."""
        return tuple(dict.fromkeys(self.view_teams + self.cancel_teams + self.create_teams))


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> tuple[ConnectionSpec, ...]:
    """The file's connections, checked against `environ` (default: os.environ) for the variables it names."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConnectionFileError(name, None, "there is no such file") from None
    except UnicodeDecodeError:
        raise ConnectionFileError(name, None, "it is not UTF-8 text") from None
    except OSError as exc:
        raise ConnectionFileError(name, None, f"it cannot be read: {exc.strerror or exc}") from None
    return parse(text, name, os.environ if environ is None else environ)


def parse(text: str, path: str, environ: Mapping[str, str]) -> tuple[ConnectionSpec, ...]:
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.14 gives the line and the bare message as attributes; before, they are in the message.
        found = re.search(r" \(at line (\d+), column \d+\)$", str(exc))
        line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else None)
        message = getattr(exc, "msg", None) or str(exc).removesuffix(found.group(0) if found else "")
        raise ConnectionFileError(path, line, f"it is not valid TOML: {message}") from None
    lines = _Lines(text)
    for key in data:
        if key != "connection":
            raise ConnectionFileError(
                path, lines.top_level(key), f"unknown key {key!r}: the file holds [[connection]] tables only"
            )
    tables = data.get("connection")
    if not isinstance(tables, list) or not tables or not all(isinstance(table, dict) for table in tables):
        raise ConnectionFileError(path, lines.top_level("connection"), "the file defines no [[connection]] table")
    specs: list[ConnectionSpec] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        spec = _Table(table, index, lines, path, environ).spec()
        if spec.slug.lower() in seen:
            raise ConnectionFileError(
                path,
                lines.key(index, "slug"),
                f"slug {spec.slug!r} is already used by the connection at line {seen[spec.slug.lower()]}",
            )
        seen[spec.slug.lower()] = spec.line
        specs.append(spec)
    return tuple(specs)


def url_problem(kind: str, url: str) -> str:
    """Why `url` cannot be a base URL of a connection of this kind ("" when it can). Shared with the admin's form."""
    if len(url) > MAX_URL_LENGTH:
        return f"base_url is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        return f"base_url {url!r} is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"base_url {url!r} must be an http(s) URL such as https://api.openai.com/v1"
    if parts.username or parts.password:
        return "base_url must not carry credentials: the key goes in an environment variable (api_key_env)"
    if parts.query or parts.fragment:
        return f"base_url {url!r} must have no query string or fragment"
    if kind == "azure":
        host = parts.hostname.lower()
        path = parts.path.rstrip("/")
        if is_loopback(host):  # a local stand-in (the sandbox serves Azure's v1 API at /sandbox/openai/v1)
            valid = path.endswith(AZURE_PATH)
        else:
            valid = parts.scheme == "https" and host.endswith(AZURE_HOSTS) and path == AZURE_PATH
        if not valid:
            return (
                f"base_url {url!r} must be the Azure OpenAI resource's v1 API base, "
                "https://<resource>.openai.azure.com/openai/v1/"
            )
    return ""


def is_loopback(host: str) -> bool:
    host = host.lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Lines:
    """Where things are in the text, for messages: the n-th [[connection]] header and the keys under it."""

    _HEADER = re.compile(r"\s*\[\[\s*connection\s*\]\]")
    _TABLE = re.compile(r"\s*\[")

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers = [number for number, line in enumerate(self.lines, 1) if self._HEADER.match(line)]

    def header(self, index: int) -> int | None:
        return self.headers[index] if index < len(self.headers) else None

    def top_level(self, key: str) -> int | None:
        pattern = self._key_pattern(key)
        for number, line in enumerate(self.lines, 1):
            if self._TABLE.match(line):
                break
            if pattern.match(line):
                return number
        table = re.compile(rf"\s*\[+\s*{re.escape(key)}\b")
        return next((n for n, line in enumerate(self.lines, 1) if table.match(line)), None)

    def key(self, index: int, key: str, within: str = "") -> int | None:
        """The line of `key` in the index-th table (in its sub-table `within`, such as teams, when given), else the
        line of the sub-table, else the table's header."""
        start = self.header(index)
        if start is None:
            return None
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines) + 1
        pattern = self._key_pattern(key)
        sub_table = re.compile(r"\s*\[\s*connection\s*\.\s*([\w-]+)\s*\]")
        current = ""  # the sub-table the line is in ("" for the [[connection]] table itself)
        for number in range(start + 1, end):
            line = self.lines[number - 1]
            if self._TABLE.match(line):
                match = sub_table.match(line)
                current = match.group(1) if match else "?"
                if within and current == within and key == within:
                    return number
                continue
            if not within and not current and pattern.match(line):
                return number
            if within and current == within and pattern.match(line):
                return number
            if within and not current and self._key_pattern(within).match(line):
                return number  # teams = { view = [...] } or teams.view = [...]
        if within and within != key:
            return self.key(index, within, within)
        return start

    @staticmethod
    def _key_pattern(key: str) -> re.Pattern:
        return re.compile(rf"""\s*["']?{re.escape(key)}["']?\s*[=.]""")


class _Table:
    """One [[connection]] table being checked: each value read once, with the line to blame when it is wrong."""

    def __init__(self, table: dict, index: int, lines: _Lines, path: str, environ: Mapping[str, str]):
        self.table, self.index, self.lines, self.path, self.environ = table, index, lines, path, environ

    def fail(self, key: str | None, problem: str, within: str = ""):
        line = self.lines.key(self.index, key, within) if key else self.lines.header(self.index)
        raise ConnectionFileError(self.path, line, problem)

    def spec(self) -> ConnectionSpec:
        for key in self.table:
            if key.lower() in _SECRET_KEYS:
                self.fail(
                    key,
                    f"{key!r}: a key is never written in the file; put it in an environment variable and name that "
                    "variable in api_key_env (webhook_secret_env for a webhook secret)",
                )
            if key not in _KEYS:
                self.fail(key, f"unknown key {key!r} (known: {', '.join(_KEYS)})")
        for key in _REQUIRED:
            if key not in self.table:
                self.fail(None, f"this [[connection]] has no {key}")
        name = self.text("name", maximum=100, required=True)
        slug = self.text("slug", maximum=50, required=True)
        if not SLUG.fullmatch(slug):
            self.fail("slug", f"slug {slug!r} must be letters, digits and hyphens (at most 50), starting with one")
        if slug.lower() == RESERVED_SLUG:
            self.fail("slug", f"slug {RESERVED_SLUG!r} is the connection of the OPENAI_* settings; choose another")
        kind = self.text("kind", maximum=20, required=True)
        if kind not in KINDS:
            self.fail("kind", f"unknown kind {kind!r}: it must be one of {', '.join(KINDS)}")
        base_url = self.text("base_url", maximum=MAX_URL_LENGTH + 1, required=True)
        if problem := url_problem(kind, base_url):
            self.fail("base_url", problem)
        organization = self.text("organization", maximum=100)
        project = self.text("project", maximum=100)
        for key, value in (("organization", organization), ("project", project)):
            if value and kind != "openai":
                self.fail(key, f"{key} is an OpenAI header; a connection of kind {kind} sends none")
        archive = self.text("archive", maximum=10)
        if archive and archive not in ARCHIVE_MODES:
            self.fail("archive", f"archive must be one of {', '.join(ARCHIVE_MODES)}; got {archive!r}")
        return ConnectionSpec(
            name=name,
            slug=slug,
            kind=kind,
            base_url=base_url,
            api_key_env=self.variable("api_key_env", "API key"),
            organization=organization,
            project=project,
            budget_per_minute=self.budget_per_minute(),
            monthly_budget=self.monthly_budget(),
            archive=archive,
            paused=self.flag("paused"),
            webhook_secret_env=self.variable("webhook_secret_env", "webhook secret"),
            **self.teams(),
            line=self.lines.header(self.index) or 0,
        )

    def text(self, key: str, *, maximum: int, required: bool = False) -> str:
        value = self.table.get(key, "")
        if not isinstance(value, str):
            self.fail(key, f"{key} must be a string in quotes")
        value = value.strip()
        if required and not value:
            self.fail(key, f"{key} must not be empty")
        if len(value) > maximum:
            self.fail(key, f"{key} is longer than {maximum} characters")
        if any(ord(character) < 32 for character in value):
            self.fail(key, f"{key} contains control characters")
        return value

    def variable(self, key: str, what: str) -> str:
        """The name of an environment variable holding a secret, which must be set (never echoed: it is a secret)."""
        name = self.text(key, maximum=100, required=key == "api_key_env")
        if not name:
            return ""
        if not VARIABLE_NAME.fullmatch(name):
            self.fail(
                key,
                f"{key} must be the NAME of the environment variable holding the {what} (letters, digits and _), "
                "not the secret itself",
            )
        if not self.environ.get(name, "").strip():
            self.fail(key, f"{key} names the environment variable {name}, which is not set")
        if key == "webhook_secret_env" and not self.environ[name].strip().startswith("whsec_"):
            self.fail(key, f"the webhook secret in {name} must start with whsec_, as the API shows it")
        return name

    def flag(self, key: str) -> bool:
        value = self.table.get(key, False)
        if not isinstance(value, bool):
            self.fail(key, f"{key} must be true or false")
        return value

    def budget_per_minute(self) -> int | None:
        value = self.table.get("budget_per_minute")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BUDGET_PER_MINUTE:
            self.fail(
                "budget_per_minute", f"budget_per_minute must be a whole number from 1 to {MAX_BUDGET_PER_MINUTE:,}"
            )
        return value

    def monthly_budget(self) -> Decimal | None:
        value = self.table.get("monthly_budget")
        if value is None:
            return None
        problem = "monthly_budget must be an amount in dollars, such as 2500 or 2500.50"
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
            self.fail("monthly_budget", problem)
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            self.fail("monthly_budget", problem)
        if (
            not amount.is_finite()
            or not Decimal(0) <= amount <= MAX_MONTHLY_BUDGET
            or amount != amount.quantize(Decimal("0.01"))
        ):
            self.fail("monthly_budget", f"{problem}, from 0 to {MAX_MONTHLY_BUDGET:,}, in cents at most")
        return amount

    def teams(self) -> dict[str, tuple[str, ...]]:
        teams = self.table.get("teams", {})
        if not isinstance(teams, dict):
            self.fail("teams", 'teams must be a table such as teams = { view = ["research"], create = ["leads"] }')
        granted = {}
        for grant, names in teams.items():
            if grant not in TEAM_GRANTS:
                self.fail(grant, f"unknown grant {grant!r} in teams (known: {', '.join(TEAM_GRANTS)})", "teams")
            if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
                self.fail(grant, f"teams.{grant} must be a list of group names in quotes", "teams")
            for name in names:
                if len(name.strip()) > 150:
                    self.fail(grant, f"the group name {name[:20]!r}... is longer than 150 characters", "teams")
            granted[f"{grant}_teams"] = tuple(dict.fromkeys(name.strip() for name in names))
        return granted
