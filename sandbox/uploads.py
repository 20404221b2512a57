"""Streaming a multipart upload's `file` straight into the sandbox's files folder, never into memory.

Size limits (REFERENCE §2.1): 512 MB for any file, 200 MB for a Batch input. Both are enforced while the file
streams in when the `purpose` field comes before the file, as the SDK and the dashboard send it; when it comes
after, the Batch limit can only be checked once the body has been read (see size_limit's callers). The sandbox's
storage quota (the room left when the upload starts) stops the stream too. The body is read in the parser's
chunks and written straight to disk, so no upload is ever held in memory whole, whatever its size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers, StopUpload
from django.http.multipartparser import MultiPartParser

from sandbox.rules import MAX_FILE_BYTES, MAX_INPUT_FILE_BYTES


def size_limit(purpose: str | None) -> int:
    return MAX_INPUT_FILE_BYTES if purpose == "batch" else MAX_FILE_BYTES


class SavedUpload:
    """What lands in the parsed files: where the bytes are on disk, and what the client called the file."""

    def __init__(self, path: Path, name: str, size: int):
        self.path = path
        self.name = name
        self.size = size


class DiskUploadHandler(FileUploadHandler):
    def __init__(self, request, directory: Path, room: int):
        super().__init__(request)
        self.directory = directory
        self.room = room  # bytes left in the sandbox's storage quota
        self.too_large = False
        self.over_quota = False
        self.temp_paths: list[Path] = []
        self._parser = None
        self._handle = None
        self._size = 0
        self._limit = MAX_FILE_BYTES

    def parse(self):
        """Parse the request's multipart body with this handler alone: (form fields, files)."""
        self._parser = MultiPartParser(self.request.META, self.request, [self], self.request.encoding)
        return self._parser.parse()

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        # The parser fills in the form fields as they arrive, so a `purpose` sent before the file is known here.
        fields_so_far = getattr(self._parser, "_post", None) or {}
        self._limit = size_limit(fields_so_far.get("purpose"))
        self.directory.mkdir(parents=True, exist_ok=True)
        # Written across several callbacks, closed in file_complete, upload_interrupted or cleanup.
        self._handle = tempfile.NamedTemporaryFile(dir=self.directory, prefix=".upload-", delete=False)  # noqa: SIM115
        self.temp_paths.append(Path(self._handle.name))
        self._size = 0
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data, start):
        self._size += len(raw_data)
        if self._size > self._limit or self._size > self.room:
            self.too_large = self._size > self._limit
            self.over_quota = not self.too_large
            self._handle.close()
            # Read and discard the rest of the body so the client gets the 400 rather than a reset connection.
            raise StopUpload(connection_reset=False)
        self._handle.write(raw_data)
        return None

    def file_complete(self, file_size):
        self._handle.close()
        return SavedUpload(Path(self._handle.name), self.file_name or "", file_size)

    def upload_interrupted(self):
        if self._handle is not None:
            self._handle.close()

    def cleanup(self):
        """Remove whatever the view did not adopt (also after a malformed body left a file half written)."""
        if self._handle is not None:
            self._handle.close()
        for path in self.temp_paths:
            path.unlink(missing_ok=True)
