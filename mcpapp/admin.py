from django.contrib import admin

from .models import ToolCall


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = ("created", "tool", "user", "application", "outcome", "arguments_bytes", "duration_ms")
    list_filter = ("outcome", "tool")
    list_select_related = ("user", "application")
    raw_id_fields = ("user", "application")
    search_fields = ("tool", "user__username", "application__name")
    date_hierarchy = "created"

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
