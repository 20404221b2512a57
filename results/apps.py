from django.apps import AppConfig


class ResultsConfig(AppConfig):
    name = "results"
    verbose_name = "results"

    def ready(self):
        from batches import events, reactions
        from results import archive, receivers, tasks

        reactions.register(archive.KEEP_STEP, tasks.keep_results)
        events.batch_became_final.connect(receivers.keep_when_final, dispatch_uid="results.keep_when_final")
