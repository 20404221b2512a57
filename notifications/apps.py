from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "notifications"

    def ready(self):
        from batches import events, reactions, sections
        from notifications import checks, jobs, receivers, tasks
        from notifications.sections import WATCH
        from results import events as results_events

        reactions.register(tasks.FINAL_STEP, tasks.notify_final)
        reactions.register(checks.STUCK_STEP, tasks.notify_stuck)
        reactions.register(checks.EXPIRING_STEP, tasks.notify_expiring)
        reactions.register(jobs.JOB_STEP, tasks.notify_job)
        events.batch_became_final.connect(receivers.notify_when_final, dispatch_uid="notifications.notify_when_final")
        events.housekeeping.connect(receivers.check_on_housekeeping, dispatch_uid="notifications.check_on_housekeeping")
        results_events.results_kept.connect(
            receivers.notify_when_job_settles, dispatch_uid="notifications.notify_when_job_settles"
        )
        sections.register(WATCH)
