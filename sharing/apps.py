from django.apps import AppConfig


class SharingConfig(AppConfig):
    name = "sharing"
    verbose_name = "Share links"

    def ready(self):
        from batches import sections
        from sharing.sections import LINKS

        sections.register(LINKS)
