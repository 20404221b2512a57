"""Changes to accounts go to the audit log: users and groups added, changed or deleted, group membership, permissions
granted or revoked, and passwords changed (a user's own change, an administrator's "set password", changepassword).

Recorded from the models' signals, whatever made the change (the admin, a management command, a shell), by the
request being answered (audit.middleware) or else by "system". Never a password or its hash: only that it changed.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from audit.log import record_here
from audit.middleware import current_request
from audit.models import Action

User = get_user_model()
# Saved on their own at every login (last_login) and when a password's hash is upgraded (password): not a change.
_BOOKKEEPING_FIELDS = {"last_login", "password"}
NAMES_LISTED = 50


def _user_target(user) -> str:
    return f"user {user.get_username()}"


def _group_target(group: Group) -> str:
    return f"group {group.name}"


def _watched_fields(model) -> list[str]:
    return [
        field.attname
        for field in model._meta.concrete_fields
        if not field.primary_key and field.attname not in _BOOKKEEPING_FIELDS
    ]


def _changes(instance, update_fields) -> list[str]:
    """What a save of an existing row changes, as "field" or "field: yes/no", from one query of the stored row."""
    fields = _watched_fields(type(instance))
    if update_fields is not None:
        fields = [name for name in fields if name in update_fields or name.removesuffix("_id") in update_fields]
    if instance._state.adding or instance.pk is None or not fields:
        return []
    stored = type(instance)._default_manager.filter(pk=instance.pk).values(*fields).first()
    if stored is None:
        return []
    changes = []
    for name in fields:
        value, before = getattr(instance, name), stored[name]
        if isinstance(value, datetime) and isinstance(before, datetime):
            # The admin's form shows and sends whole seconds: its first save drops microseconds nobody changed.
            value, before = value.replace(microsecond=0), before.replace(microsecond=0)
        if value != before:
            changes.append(f"{name}: {'yes' if value else 'no'}" if isinstance(value, bool) else name)
    return changes


def _listed(names: list[str], total: int) -> str:
    listed = ", ".join(sorted(names))
    return f"{listed} and {total - len(names)} more" if total > len(names) else listed


def _names(model, pks) -> str:
    """The names of the rows a membership or permission change names, at most NAMES_LISTED of them (one query)."""
    rows = model._default_manager.filter(pk__in=pks)
    if model is Permission:
        pairs = rows.values_list("content_type__app_label", "codename")[:NAMES_LISTED]
        names = [f"{app}.{codename}" for app, codename in pairs]
    elif model is Group:
        names = list(rows.values_list("name", flat=True)[:NAMES_LISTED])
    else:
        names = list(rows.values_list(model.USERNAME_FIELD, flat=True)[:NAMES_LISTED])
    return _listed(names, len(pks))  # record() cuts the detail to its column


@receiver(pre_save, sender=User, dispatch_uid="audit-user-pre-save")
@receiver(pre_save, sender=Group, dispatch_uid="audit-group-pre-save")
def _before_save(sender, instance, update_fields=None, raw=False, **kwargs):
    """What a save of a user or group changes, noted for its post_save receiver to record."""
    if not raw:
        instance._audit_changes = _changes(instance, update_fields)


# --- users ------------------------------------------------------------------


@receiver(post_save, sender=User, dispatch_uid="audit-user-saved")
def _user_saved(sender, instance, created, raw=False, **kwargs):
    if raw:
        return
    target = _user_target(instance)
    if created:
        flags = [name for name in ("is_staff", "is_superuser") if getattr(instance, name, False)]
        active = "active" if instance.is_active else "inactive"
        record_here(Action.USER_ADD, target=target, detail=", ".join([active, *flags]))
        return
    changes = getattr(instance, "_audit_changes", [])
    instance._audit_changes = []
    if changes:
        record_here(Action.USER_CHANGE, target=target, detail="changed " + ", ".join(changes))
    # set_password() keeps the new password in `_password` until the save that stores it; Django clears it before
    # the save that only upgrades a hash at login, so this is a password set by someone, and nothing else.
    if getattr(instance, "_password", None) is not None:
        request = current_request()
        own = request is not None and getattr(request, "user", None) is not None and request.user.pk == instance.pk
        detail = "their own password" if own else "set by an administrator or a command"
        record_here(Action.PASSWORD_CHANGE, target=target, detail=detail)


@receiver(post_delete, sender=User, dispatch_uid="audit-user-deleted")
def _user_deleted(sender, instance, **kwargs):
    record_here(Action.USER_DELETE, target=_user_target(instance))


# --- groups -----------------------------------------------------------------


@receiver(post_save, sender=Group, dispatch_uid="audit-group-saved")
def _group_saved(sender, instance, created, raw=False, **kwargs):
    if raw:
        return
    if created:
        record_here(Action.GROUP_ADD, target=_group_target(instance))
    elif changes := getattr(instance, "_audit_changes", []):
        record_here(Action.GROUP_CHANGE, target=_group_target(instance), detail="changed " + ", ".join(changes))
    instance._audit_changes = []


@receiver(post_delete, sender=Group, dispatch_uid="audit-group-deleted")
def _group_deleted(sender, instance, **kwargs):
    record_here(Action.GROUP_DELETE, target=_group_target(instance))


# --- membership and permissions ---------------------------------------------

_VERBS = {
    Group: {"post_add": "added to groups", "post_remove": "removed from groups", "pre_clear": "removed from groups"},
    User: {"post_add": "added users", "post_remove": "removed users", "pre_clear": "removed users"},
    Permission: {"post_add": "granted", "post_remove": "revoked", "pre_clear": "revoked"},
}


def _target(instance) -> str:
    return _group_target(instance) if isinstance(instance, Group) else _user_target(instance)


def _relation_changed(action, instance, reverse, model, pk_set, kind: Action):
    """One event per add, remove or clear; a clear is recorded before it happens, while its rows can be named."""
    if action not in ("post_add", "post_remove", "pre_clear"):
        return
    if action == "pre_clear":
        pk_set = set(getattr(instance, _RELATION_NAMES[(type(instance), model)]).values_list("pk", flat=True))
    if not pk_set:
        return
    if reverse and isinstance(instance, Permission):
        # permission.user_set.add(user) or permission.group_set.add(group): one event for each account given it.
        permission = f"{instance.content_type.app_label}.{instance.codename}"
        for account in model._default_manager.filter(pk__in=pk_set):
            record_here(kind, target=_target(account), detail=f"{_VERBS[Permission][action]} {permission}")
        return
    record_here(kind, target=_target(instance), detail=f"{_VERBS[model][action]} {_names(model, pk_set)}")


_RELATION_NAMES = {
    (User, Group): "groups",
    (Group, User): "user_set",
    (User, Permission): "user_permissions",
    (Group, Permission): "permissions",
    (Permission, User): "user_set",
    (Permission, Group): "group_set",
}


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="audit-membership")
def _membership_changed(sender, instance, action, reverse, model, pk_set, **kwargs):
    _relation_changed(action, instance, reverse, model, pk_set, Action.MEMBERSHIP)


@receiver(m2m_changed, sender=User.user_permissions.through, dispatch_uid="audit-user-permissions")
@receiver(m2m_changed, sender=Group.permissions.through, dispatch_uid="audit-group-permissions")
def _permissions_changed(sender, instance, action, reverse, model, pk_set, **kwargs):
    _relation_changed(action, instance, reverse, model, pk_set, Action.PERMISSIONS)
