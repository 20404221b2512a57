from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "notifications"

    def ready(self):
        from batches import events, reactions, sections
        from notifications import checks, receivers, tasks
        from notifications.sections import WATCH

        reactions.register(tasks.FINAL_STEP, tasks.notify_final)
        reactions.register(checks.STUCK_STEP, tasks.notify_stuck)
        reactions.register(checks.EXPIRING_STEP, tasks.notify_expiring)
        events.batch_became_final.connect(receivers.notify_when_final, dispatch_uid="notifications.notify_when_final")
        events.housekeeping.connect(receivers.check_on_housekeeping, dispatch_uid="notifications.check_on_housekeeping")
        sections.register(WATCH)
