"""Whatever ends a token ends its check on every worker, at once.

django-oauth-toolkit deletes access tokens from many places (/revoke, refresh rotation,
reuse protection, admin actions, our services); a receiver on the row's deletion is the one
point all of them pass, and QuerySet.delete() sends it for every row. A user deactivated or a
client disabled keeps its token rows, so those are announced by user and by client. Each
announcement is applied in this process right away and again once the transaction commits
(a check read from the database in between could otherwise be cached as still valid).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from oauth2_provider.models import AccessToken

from .auth import application_tokens_forget, token_cache_forget, user_tokens_forget


def _now_and_on_commit(announce: Any, value: Any) -> None:
    announce(value)
    transaction.on_commit(lambda: announce(value))


@receiver(post_delete, sender=AccessToken, dispatch_uid="mcpapp-forget-token")
def forget_deleted_token(sender: type[AccessToken], instance: AccessToken, **kwargs: Any) -> None:
    _now_and_on_commit(token_cache_forget, instance.token_checksum)


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="mcpapp-forget-inactive-user")
def forget_deactivated_user(sender: type[Any], instance: Any, **kwargs: Any) -> None:
    if not instance.is_active:
        _now_and_on_commit(user_tokens_forget, instance.pk)


@receiver(
    post_save, sender=settings.OAUTH2_PROVIDER_APPLICATION_MODEL, dispatch_uid="mcpapp-forget-disabled-client"
)
def forget_disabled_client(sender: type[Any], instance: Any, **kwargs: Any) -> None:
    if getattr(instance, "disabled_at", None) is not None:
        _now_and_on_commit(application_tokens_forget, instance.pk)
