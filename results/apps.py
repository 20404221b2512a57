from django.apps import AppConfig


class ResultsConfig(AppConfig):
    name = "results"
    verbose_name = "results"

    def ready(self):
        from batches import events, reactions, sections
        from results import archive, receivers, tasks
        from results.sections import CARD, NOTICE

        sections.register(NOTICE)
        sections.register(CARD)
        reactions.register(archive.KEEP_STEP, tasks.keep_results)
        reactions.register(archive.CHECK_STEP, tasks.check_results_upstream)
        events.batch_became_final.connect(receivers.keep_when_final, dispatch_uid="results.keep_when_final")
