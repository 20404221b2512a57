from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "webhooks"

    def ready(self):
        from batches import metrics, sections
        from webhooks.metrics import refusal_figures
        from webhooks.sections import LAST_RECEIVED

        sections.register(LAST_RECEIVED)
        metrics.register(refusal_figures)
