from django.apps import AppConfig


class RetriesConfig(AppConfig):
    name = "retries"
    verbose_name = "retries"

    def ready(self):
        from batches import events, reactions, sections
        from results import events as results_events
        from retries import auto, receivers, tasks, verify
        from retries.sections import ACTIONS, CARD

        reactions.register(verify.STEP, tasks.verify_lineage)
        reactions.register(auto.STEP, tasks.auto_retry)
        events.batch_changed.connect(receivers.check_new_claim, dispatch_uid="retries.check_new_claim")
        results_events.results_kept.connect(
            receivers.react_to_kept_results, dispatch_uid="retries.react_to_kept_results"
        )
        sections.register(CARD)
        sections.register(ACTIONS)
