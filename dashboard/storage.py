"""Static files: hashed and compressed once `collectstatic` has run, plain names before that."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Whitenoise's manifest storage, which links every file under its hashed name from the manifest.

    Without a manifest (a fresh clone, `manage.py runserver` before any `collectstatic`) the plain name is linked
    instead of failing the page; settings.WHITENOISE_USE_FINDERS then serves the file from static/.
    """

    def stored_name(self, name):
        if not self.hashed_files:
            return name
        return super().stored_name(name)
