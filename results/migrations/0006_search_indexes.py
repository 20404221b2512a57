"""PostgreSQL only: indexes for the results search (results/search.py), which would otherwise read and upper-case
every line of a batch (100-180 ms for 50,000 lines).

- The words of each line's answer preview and request, GIN on `result_line_words(preview, prompt)`: a search matches
  lines holding every word of it. The function is `to_tsvector('simple', ...)` wrapped in PL/pgSQL with a high cost,
  so that the planner never chooses to compute it line by line (0.4-1 s for 50,000 lines) over reading the index;
  the query must call it exactly so (search.AnswerWords), or the index is not used.
- custom_id's trigrams (pg_trgm), GIN on `UPPER(custom_id)`, the expression Django's `icontains` compares: custom_id
  is still matched by any part of it. custom_id is short, so this index is small (5 MB for 50,000 lines).

Both are needed together: a search tests custom_id OR the words, and only two indexes can answer that without
computing every line's words. pg_trgm is a trusted extension (PostgreSQL 13 and later), which the database's owner
may create; a database user who may not gets a message saying what to run.

SQLite keeps its scan, which meets its target.
"""

from django.db import DatabaseError, migrations, transaction

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
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as error:
        raise RuntimeError(
            f"The results search needs PostgreSQL's pg_trgm extension, which this database user may not create "
            f"({error}). Run `CREATE EXTENSION pg_trgm;` in this database as its owner, then migrate again."
        ) from error
    for statement in WORDS:
        schema_editor.execute(statement)
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
