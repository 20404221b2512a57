from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self):
        from audit import accounts, signals  # noqa: F401  (connect the login and account receivers)
        from audit.sections import ACTIVITY
        from batches import sections

        sections.register(ACTIVITY)
