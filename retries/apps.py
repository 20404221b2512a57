from django.apps import AppConfig


class RetriesConfig(AppConfig):
    name = "retries"
    verbose_name = "retries"

    def ready(self):
        from django.db.models.signals import post_save

        from batches.models import Batch
        from retries import lineage

        post_save.connect(lineage.link_on_save, sender=Batch, dispatch_uid="retries.link_on_save")
