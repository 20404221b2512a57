from django.apps import AppConfig


class ResultsConfig(AppConfig):
    name = "results"
    verbose_name = "results"

    def ready(self):
        from batches import sections
        from results.sections import CARD, NOTICE

        sections.register(NOTICE)
        sections.register(CARD)
