"""Drop a revoked access token from the MCP token cache the moment its row goes.

django-oauth-toolkit deletes access tokens from many places (/revoke, refresh rotation,
reuse protection, admin actions, our services); a receiver on the row's deletion is the one
point all of them pass, and QuerySet.delete() sends it for every row.
"""

from typing import Any

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from oauth2_provider.models import AccessToken

from .auth import token_cache_forget


@receiver(post_delete, sender=AccessToken, dispatch_uid="mcpapp-forget-token")
def forget_deleted_token(sender: type[AccessToken], instance: AccessToken, **kwargs: Any) -> None:
    token_cache_forget(instance.token_checksum)


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="mcpapp-forget-inactive-user")
def forget_deactivated_user(sender: type[Any], instance: Any, **kwargs: Any) -> None:
    """A deactivated user's tokens stay in the database but must stop working at once."""
    if instance.is_active:
        return
    for checksum in AccessToken.objects.filter(user_id=instance.pk).values_list("token_checksum", flat=True):
        token_cache_forget(checksum)
