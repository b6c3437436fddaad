"""SQLite: the database clock in the text format of Python datetimes (six fractional digits).

SQLite compares datetimes as text. Its clock gave ``12:00:00.123`` where Django writes
``12:00:00.123000``, so a filter with a time read back from the database could miss the row it was
read from. The defaults now write six digits, and the values already written get three zeros.
"""

import django_durably.models
from django.db import migrations, models


# Every datetime column that the database clock writes.
DATETIME_COLUMNS = {
    "durably_run": [
        "run_after",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
        "lease_expires_at",
    ],
    "durably_step": ["started_at", "completed_at"],
    "durably_runlog": ["created_at"],
    "durably_auditrecord": ["created_at"],
}


def pad_sqlite_milliseconds(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        for table, columns in DATETIME_COLUMNS.items():
            for column in columns:
                cursor.execute(
                    f'UPDATE "{table}" SET "{column}" = "{column}" || \'000\' '
                    f"WHERE \"{column}\" GLOB '????-??-?? ??:??:??.???'"
                )


class Migration(migrations.Migration):
    dependencies = [
        ("durably", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(pad_sqlite_milliseconds, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditrecord",
            name="created_at",
            field=models.DateTimeField(
                db_default=django_durably.models.DatabaseNow(), verbose_name="at"
            ),
        ),
        migrations.AlterField(
            model_name="run",
            name="created_at",
            field=models.DateTimeField(
                db_default=django_durably.models.DatabaseNow(), verbose_name="created at"
            ),
        ),
        migrations.AlterField(
            model_name="run",
            name="run_after",
            field=models.DateTimeField(
                db_default=django_durably.models.DatabaseNow(), verbose_name="run after"
            ),
        ),
        migrations.AlterField(
            model_name="run",
            name="updated_at",
            field=models.DateTimeField(
                db_default=django_durably.models.DatabaseNow(), verbose_name="updated at"
            ),
        ),
        migrations.AlterField(
            model_name="runlog",
            name="created_at",
            field=models.DateTimeField(
                db_default=django_durably.models.DatabaseNow(), verbose_name="created at"
            ),
        ),
        migrations.AlterField(
            model_name="step",
            name="completed_at",
            field=models.DateTimeField(
                db_default=django_durably.models.DatabaseNow(), verbose_name="finished at"
            ),
        ),
    ]
