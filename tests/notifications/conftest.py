import pytest
from cryptography.fernet import Fernet

from tests.notifications.receiver import Receiver


@pytest.fixture(autouse=True)
def _notification_settings(settings):
    settings.BATCHBOARD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.BATCHBOARD_ARCHIVE = "off"  # no result files to fetch: these tests are about what follows a final state
    settings.BATCHBOARD_BASE_URL = "https://batchboard.example.com"
    settings.BATCHBOARD_NOTIFY_PAUSE_AFTER = 3
    settings.BATCHBOARD_NOTIFY_MAX_TRIES = 5


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()
