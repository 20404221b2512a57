from django.apps import AppConfig


class RetriesConfig(AppConfig):
    name = "retries"
    verbose_name = "retries"

    def ready(self):
        from django.db.models.signals import post_save

        from batches import sections
        from batches.models import Batch
        from results.events import results_kept
        from retries import auto, lineage
        from retries.sections import ACTIONS, CARD

        post_save.connect(lineage.link_on_save, sender=Batch, dispatch_uid="retries.link_on_save")
        results_kept.connect(auto.retry_when_kept, dispatch_uid="retries.retry_when_kept")
        sections.register(CARD)
        sections.register(ACTIONS)
