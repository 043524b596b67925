from django.conf import settings
from django.db import models
from django.utils import timezone


class ToolCall(models.Model):
    """One MCP tool call, for operators: who, through which client, how it went, how long."""

    class Outcome(models.TextChoices):
        OK = "ok", "ok"
        ERROR = "error", "error"
        DENIED = "denied", "denied"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    application = models.ForeignKey(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL, null=True, on_delete=models.SET_NULL
    )
    tool = models.CharField(max_length=128, db_index=True)
    arguments_bytes = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.FloatField(default=0)
    # When the call was made (records are written in batches, a little later).
    created = models.DateTimeField(default=timezone.now, db_index=True)
    # Given when the call is made: a record written twice (a batch whose write was in doubt
    # at shutdown is spooled too, and the next worker writes it again) is stored once.
    call_id = models.UUIDField(null=True, unique=True, editable=False)

    class Meta:
        ordering = ["-created"]
        permissions = [("use_server_stats", "Can use the server_stats MCP tool")]

    def __str__(self) -> str:
        return f"{self.tool} by {self.user_id} ({self.outcome})"
