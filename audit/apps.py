from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self):
        from audit import signals  # noqa: F401  (connects the login receivers)
        from audit.sections import ACTIVITY
        from batches import sections

        sections.register(ACTIVITY)
