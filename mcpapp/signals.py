"""Whatever ends a token, or changes what it allows, ends its check on every worker, at once.

django-oauth-toolkit deletes access tokens from many places (/revoke, refresh rotation,
reuse protection, admin actions, our services); a receiver on the row's deletion is the one
point all of them pass, and QuerySet.delete() sends it for every row. A user deactivated or a
client disabled keeps its token rows, so those are announced by user and by client. A check
also carries its user's permissions (tools are listed and gated without a database read), so
a change to a user's permissions, groups or superuser flag is announced by user, and a
change to a group's permissions (or a group or permission deleted) drops every check. Each
announcement is applied in this process right away and again once the transaction commits
(a check read from the database in between could otherwise be cached as still valid).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from oauth2_provider.models import AccessToken

from .auth import all_tokens_forget, application_tokens_forget, token_cache_forget, user_tokens_forget

User = get_user_model()
_CHANGED = {"post_add", "post_remove", "post_clear"}


def _now_and_on_commit(announce: Callable[[], None]) -> None:
    announce()
    transaction.on_commit(announce)


@receiver(post_delete, sender=AccessToken, dispatch_uid="mcpapp-forget-token")
def forget_deleted_token(sender: type[AccessToken], instance: AccessToken, **kwargs: Any) -> None:
    _now_and_on_commit(lambda: token_cache_forget(instance.token_checksum))


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="mcpapp-forget-inactive-user")
def forget_changed_user(sender: type[Any], instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """Deactivated, or saved with what may change its permissions (is_superuser): a login,
    which saves only last_login, is not announced."""
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    _now_and_on_commit(lambda: user_tokens_forget(instance.pk))


def _forget_users(instance: Any, reverse: bool, pk_set: set[Any] | None) -> None:
    if not reverse:
        _now_and_on_commit(lambda: user_tokens_forget(instance.pk))  # the user's own permissions or groups
    elif pk_set:
        for user_id in pk_set:  # a permission or group given to (or taken from) these users
            _now_and_on_commit(functools.partial(user_tokens_forget, int(user_id)))
    else:
        _now_and_on_commit(all_tokens_forget)  # cleared: users not named


@receiver(m2m_changed, sender=User.user_permissions.through, dispatch_uid="mcpapp-forget-user-permissions")
def forget_user_permissions(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    if action in _CHANGED:
        _forget_users(instance, reverse, pk_set)


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="mcpapp-forget-user-groups")
def forget_user_groups(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    if action in _CHANGED:
        _forget_users(instance, reverse, pk_set)


@receiver(m2m_changed, sender=Group.permissions.through, dispatch_uid="mcpapp-forget-group-permissions")
def forget_group_permissions(sender: Any, action: str, **kwargs: Any) -> None:
    if action in _CHANGED:
        _now_and_on_commit(all_tokens_forget)


@receiver(post_delete, sender=Group, dispatch_uid="mcpapp-forget-deleted-group")
@receiver(post_delete, sender=Permission, dispatch_uid="mcpapp-forget-deleted-permission")
def forget_deleted_group_or_permission(sender: Any, **kwargs: Any) -> None:
    _now_and_on_commit(all_tokens_forget)


@receiver(
    post_save, sender=settings.OAUTH2_PROVIDER_APPLICATION_MODEL, dispatch_uid="mcpapp-forget-disabled-client"
)
def forget_disabled_client(sender: type[Any], instance: Any, **kwargs: Any) -> None:
    if getattr(instance, "disabled_at", None) is not None:
        _now_and_on_commit(lambda: application_tokens_forget(instance.pk))
