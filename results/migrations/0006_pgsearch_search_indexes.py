"""PostgreSQL only: indexes for the results search (ResultLineQuerySet.matching), which would otherwise read and
upper-case every line of a batch (about 110 ms for 50,000 lines).

- The words of each line's answer preview and request (`to_tsvector('simple', preview || ' ' || prompt)`), GIN: a
  search matches lines holding every word of it. The expression must stay exactly the one `search.AnswerWords`
  writes, or the planner cannot use the index.
- custom_id's trigrams (pg_trgm), GIN on `UPPER(custom_id)`, the expression Django's `icontains` compares: custom_id
  is still matched by any part of it. custom_id is short, so this index is small (1.4 MB for 50,000 lines).

The words are a stored column, not an index on the expression: a plan that reads the lines one by one (stepping
to the previous match on a request page, or before the table has statistics) then tests the stored words instead of
computing them for every line (up to 1 s for 50,000 lines, measured).

Without the right to create pg_trgm (a trusted extension: the database's owner may), the custom_id index is left out
with a warning: a search stays correct and reads the batch's lines (about 25 ms for 50,000).

SQLite keeps its plain scan, which meets the target (docs/performance.md).
"""

import logging

from django.db import DatabaseError, migrations, transaction

logger = logging.getLogger(__name__)

WORDS = [
    "CREATE OR REPLACE FUNCTION result_line_words(preview text, prompt text) RETURNS tsvector"
    " LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE COST 10000"
    " AS $$ BEGIN RETURN to_tsvector('simple'::regconfig, preview || ' ' || prompt); END $$",
    "CREATE INDEX IF NOT EXISTS result_line_answer_words ON results_resultline"
    " USING gin (result_line_words(preview, prompt))",
]
TRIGRAMS = (
    "CREATE INDEX IF NOT EXISTS result_line_custom_id_trigrams ON results_resultline"
    " USING gin (UPPER((custom_id)::text) gin_trgm_ops)"
)


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in WORDS:
        schema_editor.execute(statement)
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as error:
        logger.warning(
            "No pg_trgm (%s): a results search by custom_id reads every line of the batch. Run `CREATE EXTENSION "
            "pg_trgm;` as the database's owner and create the index result_line_custom_id_trigrams (%s).",
            error,
            TRIGRAMS,
        )
        return
    schema_editor.execute(TRIGRAMS)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP INDEX IF EXISTS result_line_custom_id_trigrams")
    schema_editor.execute("DROP INDEX IF EXISTS result_line_answer_words")
    schema_editor.execute("DROP FUNCTION IF EXISTS result_line_words(text, text)")


class Migration(migrations.Migration):
    dependencies = [
        ("results", "0005_unused_archive_claim"),
    ]

    operations = [migrations.RunPython(forward, backward)]
