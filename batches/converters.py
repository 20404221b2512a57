"""URL converter for batch ids, so a malformed id is a 404 that never reaches the API."""


class BatchIdConverter:
    regex = r"batch_[A-Za-z0-9_-]{1,120}"

    def to_python(self, value):
        return value

    def to_url(self, value):
        return value
