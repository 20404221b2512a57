"""Connections in the admin: keys write-only and stored encrypted, connections of the configuration read-only, and
`manage.py rotate_encryption_key`."""

import io

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import reverse

from audit.models import Action, AuditEvent
from batches import configured_connections, secrets, services
from batches.models import Connection, ConnectionSource

pytestmark = pytest.mark.django_db

KEY = "sk-admin-made-0123456789-verysecret-Zq7x"
HOOK = "whsec_YWRtaW4tbWFkZS1zZWNyZXQ="
OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def encryption_key(settings):
    settings.BATCHBOARD_ENCRYPTION_KEY = OLD


ADD = reverse("admin:batches_connection_add")
LIST = reverse("admin:batches_connection_changelist")


def change_url(connection):
    return reverse("admin:batches_connection_change", args=[connection.pk])


def form(**changes):
    data = {
        "name": "Research",
        "slug": "research",
        "kind": "openai",
        "base_url": "https://api.openai.com/v1",
        "organization": "",
        "project": "proj_research",
        "budget_per_minute": "",
        "monthly_budget": "",
        "archive": "",
        "api_key": KEY,
        "webhook_secret": "",
    }
    data.update(changes)
    return data


def made(admin_client, **changes) -> Connection:
    response = admin_client.post(ADD, form(**changes))
    assert response.status_code == 302, response.content.decode()
    return Connection.objects.get(slug=changes.get("slug", "research"))


def test_it_stores_a_new_connections_key_encrypted_and_never_shows_it(admin_client):
    team = Group.objects.create(name="research")
    connection = made(admin_client, webhook_secret=HOOK, view_teams=[team.pk])

    assert connection.source == ConnectionSource.ADMIN and connection.api_key_env == ""
    assert KEY not in connection.api_key_encrypted and secrets.decrypt(connection.api_key_encrypted) == KEY
    assert secrets.decrypt(connection.webhook_secret_encrypted) == HOOK
    assert list(connection.view_teams.all()) == [team]
    assert connection.upstream().api_key == KEY
    for url in (change_url(connection), LIST, f"{LIST}?q=research"):
        page = admin_client.get(url).content.decode()
        assert KEY not in page and KEY[-4:] not in page and HOOK not in page
        assert connection.api_key_encrypted not in page
    assert "Stored encrypted." in admin_client.get(change_url(connection)).content.decode()


def test_a_blank_key_on_edit_keeps_the_stored_one(admin_client):
    connection = made(admin_client, webhook_secret=HOOK)
    stored = (connection.api_key_encrypted, connection.webhook_secret_encrypted)

    response = admin_client.post(change_url(connection), form(name="Research lab", api_key=""))

    connection.refresh_from_db()
    assert response.status_code == 302
    assert connection.name == "Research lab"
    assert (connection.api_key_encrypted, connection.webhook_secret_encrypted) == stored


def test_a_new_key_on_edit_replaces_it_and_a_webhook_secret_can_be_removed(admin_client):
    connection = made(admin_client, webhook_secret=HOOK)

    admin_client.post(change_url(connection), form(api_key="sk-replaced-key", remove_webhook_secret="on"))

    connection.refresh_from_db()
    assert secrets.decrypt(connection.api_key_encrypted) == "sk-replaced-key"
    assert connection.webhook_secret_encrypted == ""


@pytest.mark.parametrize("encryption_key", ["", "not-a-fernet-key"])
def test_it_refuses_to_store_a_key_without_a_usable_encryption_key(admin_client, settings, encryption_key):
    settings.BATCHBOARD_ENCRYPTION_KEY = encryption_key

    response = admin_client.post(ADD, form())

    page = response.content.decode()
    assert response.status_code == 200
    assert "It cannot be stored: BATCHBOARD_ENCRYPTION_KEY" in page
    assert KEY not in page  # not even sent back in the form
    assert not Connection.objects.filter(slug="research").exists()


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"slug": "re_search"}, "slug", "Letters, digits and hyphens only"),
        ({"slug": "default"}, "slug", "connection of the OPENAI_* settings"),
        ({"api_key": ""}, "api_key", "This field is required."),
        ({"webhook_secret": "not-a-secret"}, "webhook_secret", "starts with whsec_"),
        ({"kind": "azure", "project": ""}, "base_url", "Azure OpenAI resource"),
        ({"kind": "compatible", "base_url": "http://127.0.0.1:4000/v1"}, "project", "Only an OpenAI connection"),
        ({"base_url": "https://sk-x:y@api.openai.com/v1"}, "base_url", "Must not carry credentials"),
    ],
)
def test_it_refuses_a_bad_connection_with_a_clear_error_and_stores_nothing(admin_client, changes, field, says):
    response = admin_client.post(ADD, form(**changes))

    errors = response.context["adminform"].form.errors
    assert response.status_code == 200
    assert says in " ".join(errors[field])
    assert KEY not in response.content.decode()
    assert not Connection.objects.filter(source=ConnectionSource.ADMIN).exists()


@pytest.fixture
def file_connection(settings, tmp_path, monkeypatch):
    """A connection of a connections file, its key in the environment."""
    monkeypatch.setenv("TEST_FILE_KEY", "sk-from-the-environment")
    path = tmp_path / "connections.toml"
    path.write_text(
        '[[connection]]\nname = "Finance"\nslug = "finance"\nkind = "openai"\n'
        'base_url = "https://api.openai.com/v1"\napi_key_env = "TEST_FILE_KEY"\n'
    )
    settings.BATCHBOARD_CONNECTIONS = str(path)
    applied = configured_connections.forget_applied()
    configured_connections.apply_connection_file()
    yield Connection.objects.get(slug="finance")
    configured_connections.restore_applied(applied)  # the database is rolled back to what it was


def test_a_connection_of_the_file_is_read_only_and_says_where_it_is_defined(admin_client, settings, file_connection):
    finance = file_connection
    path = settings.BATCHBOARD_CONNECTIONS

    page = admin_client.get(change_url(finance)).content.decode()
    response = admin_client.post(change_url(finance), {"name": "Hijacked", "paused": "on"})

    assert f"Defined in {path}: change it there and restart." in page
    assert "Read from the environment variable TEST_FILE_KEY (set)." in page
    assert "sk-from-the-environment" not in page
    assert 'name="name"' not in page and 'name="api_key"' not in page
    assert response.status_code == 403
    finance.refresh_from_db()
    assert finance.name == "Finance" and not finance.paused
    assert (
        admin_client.post(reverse("admin:batches_connection_delete", args=[finance.pk]), {"post": "yes"}).status_code
        == 403
    )


def test_the_default_connection_may_be_paused_and_granted_here_but_not_redefined(admin_client):
    default = Connection.objects.default()
    team = Group.objects.create(name="everyone-else")

    page = admin_client.get(change_url(default)).content.decode()
    response = admin_client.post(
        change_url(default), {"paused": "on", "view_teams": [team.pk], "base_url": "https://evil.example.com/v1"}
    )

    default.refresh_from_db()
    assert "Defined by the OPENAI_* settings" in page
    assert response.status_code == 302
    assert default.paused and list(default.view_teams.all()) == [team]
    assert default.base_url == "" and default.source == ConnectionSource.SETTINGS


def test_a_connection_made_in_the_admin_calls_upstream_with_its_stored_key(admin_client, sandbox_url):
    base = sandbox_url.removesuffix("/sandbox/v1")
    finance = made(
        admin_client,
        slug="finance",
        kind="azure",
        project="",
        base_url=f"{base}/sandbox/openai/v1",
        api_key="sk-sandbox-second",
    )

    page = services.get_client(connection=finance).list_batches()

    assert list(page.data) == []  # the second organisation's (empty) list: the key was decrypted and sent as api-key


def test_rotation_re_encrypts_with_the_first_key_so_the_old_one_can_go(admin_client, settings):
    connection = made(admin_client, webhook_secret=HOOK)
    before = connection.api_key_encrypted
    settings.BATCHBOARD_ENCRYPTION_KEY = f"{NEW},{OLD}"
    assert secrets.decrypt(before) == KEY  # the old key, second in the list, still decrypts

    call_command("rotate_encryption_key", stdout=(out := io.StringIO()))

    connection.refresh_from_db()
    assert out.getvalue().strip() == "Re-encrypted 2 secret(s) of 1 connection(s) with the first key."
    settings.BATCHBOARD_ENCRYPTION_KEY = NEW
    assert secrets.decrypt(connection.api_key_encrypted) == KEY
    assert secrets.decrypt(connection.webhook_secret_encrypted) == HOOK
    with pytest.raises(secrets.Unreadable):
        secrets.decrypt(before)  # what was stored before needed the old key
    call_command("rotate_encryption_key", stdout=io.StringIO())  # again: harmless
    connection.refresh_from_db()
    assert secrets.decrypt(connection.api_key_encrypted) == KEY


def test_rotation_names_a_secret_no_key_decrypts_and_leaves_it(admin_client, settings):
    connection = made(admin_client)
    settings.BATCHBOARD_ENCRYPTION_KEY = NEW

    with pytest.raises(CommandError, match=r"decrypts: research \(api key\)\.") as caught:
        call_command("rotate_encryption_key", stdout=io.StringIO())

    assert KEY not in str(caught.value)
    assert Connection.objects.get(pk=connection.pk).api_key_encrypted == connection.api_key_encrypted


def test_rotation_without_an_encryption_key_says_so(settings):
    settings.BATCHBOARD_ENCRYPTION_KEY = ""

    with pytest.raises(CommandError, match="BATCHBOARD_ENCRYPTION_KEY is not set"):
        call_command("rotate_encryption_key")


def test_making_changing_and_deleting_a_connection_is_audited_with_field_names_never_secrets(admin_client, admin_user):
    connection = made(admin_client, webhook_secret=HOOK)
    admin_client.post(change_url(connection), form(name="Research lab", api_key="sk-replaced-key-0123456789-Zq7x"))
    admin_client.post(change_url(connection), form(name="Research lab", api_key=""))  # nothing changed: no event
    delete = reverse("admin:batches_connection_delete", args=[connection.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302

    events = list(AuditEvent.objects.filter(target="connection research").order_by("pk"))
    assert [event.action for event in events] == [
        Action.CONNECTION_ADD,
        Action.CONNECTION_CHANGE,
        Action.CONNECTION_DELETE,
    ]
    assert {event.user_id for event in events} == {admin_user.pk}
    assert {event.username for event in events} == {admin_user.username}
    assert events[0].detail == "openai at https://api.openai.com/v1; API key set; webhook secret set"
    assert events[1].detail == "changed Name, API key"
    for event in events:
        assert KEY not in str(vars(event)) and HOOK not in str(vars(event)) and "sk-replaced" not in str(vars(event))


def test_a_connection_change_names_its_connection_and_a_refused_form_is_not_audited(admin_client):
    connection = made(admin_client)
    admin_client.post(change_url(connection), form(budget_per_minute="30", api_key=""))
    refused = admin_client.post(change_url(connection), form(slug="default"))

    assert refused.status_code == 200  # the form again, with its error
    change = AuditEvent.objects.get(action=Action.CONNECTION_CHANGE)
    assert change.connection_id == connection.pk
    assert change.detail == "changed Budget per minute"
    assert AuditEvent.objects.filter(action=Action.CONNECTION_CHANGE).count() == 1
