from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    verbose_name = "Batches"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in

        from batches.middleware import stamp_session

        user_logged_in.connect(stamp_session, dispatch_uid="batchboard-session-stamp")
