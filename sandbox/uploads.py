"""An upload handler that streams the multipart `file` straight into the sandbox's files folder, never into memory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers, StopUpload

MAX_FILE_BYTES = 512 * 1024 * 1024  # any file (REFERENCE §2.1); Batch inputs have a lower cap, checked by the view


class SavedUpload:
    """What lands in request.FILES: where the bytes are on disk, and what the client called the file."""

    def __init__(self, path: Path, name: str, size: int):
        self.path = path
        self.name = name
        self.size = size


class DiskUploadHandler(FileUploadHandler):
    def __init__(self, request, directory: Path):
        super().__init__(request)
        self.directory = directory
        self.too_large = False
        self.temp_paths: list[Path] = []
        self._handle = None
        self._size = 0

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Written across several callbacks, closed in file_complete or upload_interrupted.
        self._handle = tempfile.NamedTemporaryFile(dir=self.directory, prefix=".upload-", delete=False)  # noqa: SIM115
        self.temp_paths.append(Path(self._handle.name))
        self._size = 0
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data, start):
        self._size += len(raw_data)
        if self._size > MAX_FILE_BYTES:
            self.too_large = True
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
        """Remove whatever the view did not adopt."""
        for path in self.temp_paths:
            path.unlink(missing_ok=True)
