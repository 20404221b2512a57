"""The results search (`q`): which lines a search text selects, on each database.

SQLite: custom_id, the answer preview or the request holding the text anywhere, in any case (a scan of the batch's
lines, within its target at 50,000 lines).

PostgreSQL: custom_id holding the text anywhere, in any case (on its trigram index), or the answer preview and the
request together holding every word of the text, in any case and any order (on their words' index): the indexes of
migration 0006, without which this would scan and upper-case every line (docs/performance.md).
"""

from __future__ import annotations

from django.db import connection
from django.db.models import BooleanField, F, Func, Q, TextField, Value


class AnswerWords(Func):
    """The words of a line's answer preview and request: the expression of the index result_line_answer_words
    (migration 0006), so that the planner uses it."""

    function = "result_line_words"

    def __init__(self):
        super().__init__(F("preview"), F("prompt"), output_field=TextField())


class WordsOf(Func):
    """The words of a search text, all required: `plainto_tsquery` reads no search syntax."""

    template = "plainto_tsquery('simple'::regconfig, %(expressions)s)"


class HoldsWords(Func):
    """`words @@ query`: the words hold every word of the query."""

    template = "(%(expressions)s)"
    arg_joiner = " @@ "
    output_field = BooleanField()


def search_help() -> str:
    """What a search matches, as the results page's search field says under it."""
    if connection.vendor == "postgresql":
        return "custom_id: any part of it. Answer and request: whole words, every one, in any order."
    return "custom_id, answer or request: any part of them."


SEARCHED_POSITION = "searched_position"


def reads_every_line() -> bool:
    """Whether a search reads every line of a batch (SQLite: no index holds any part of a text)."""
    return connection.vendor != "postgresql"


def searched(lines, text: str):
    """The lines a search for `text` finds. On PostgreSQL they are then put in order (ResultLineQuerySet.in_order) by
    `position + 0`, which no index gives: asked for the first match by position (a request page's previous and next,
    the API's pages), the planner would otherwise walk the position index computing each line's words until one
    matches (0.4 s for a rare word in 50,000 lines); this way it reads the matches off the indexes and sorts them.
    SQLite scans either way, and stops at the first match when walking."""
    lines = lines.filter(search_condition(text))
    if connection.vendor == "postgresql":
        lines = lines.alias(**{SEARCHED_POSITION: F("position") + 0})
    return lines


def search_condition(text: str) -> Q:
    """The condition selecting the lines a search for `text` finds."""
    if connection.vendor == "postgresql":
        return Q(custom_id__icontains=text) | Q(HoldsWords(AnswerWords(), WordsOf(Value(text))))
    return Q(custom_id__icontains=text) | Q(preview__icontains=text) | Q(prompt__icontains=text)
