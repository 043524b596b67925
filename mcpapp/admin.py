from typing import Any

from django.contrib import admin
from django.db.models import Case, QuerySet, Value, When
from django.db.models.expressions import OrderBy
from django.http import HttpRequest

from .models import ToolCall
from .tools.server_stats import known_tool_names

UNKNOWN = "__unknown__"


class ToolFilter(admin.SimpleListFilter):
    """Only the tools this server serves: a client calling made-up names cannot fill the filter."""

    title = "tool"
    parameter_name = "tool"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        known = [(name, name) for name in sorted(known_tool_names())]
        return [*known, (UNKNOWN, "(names it does not serve)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ToolCall]) -> QuerySet[ToolCall]:
        value = self.value()
        if value == UNKNOWN:
            return queryset.exclude(tool__in=known_tool_names())
        if value:
            return queryset.filter(tool=value)
        return queryset


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    """The audit of tool calls. Failed and refused calls are listed first (newest first within
    each group), so what needs looking at is on the first page; sort by a column to change that."""

    list_display = ("created", "tool", "user", "application", "outcome", "arguments_bytes", "duration")
    list_filter = ("outcome", ToolFilter)
    list_select_related = ("user", "application")
    raw_id_fields = ("user", "application")
    search_fields = ("tool", "user__username", "application__name")
    date_hierarchy = "created"
    fields = ("created", "tool", "outcome", "error", "user", "application", "arguments_bytes", "duration")
    readonly_fields = ("created", "duration")

    def get_ordering(self, request: HttpRequest) -> list[Any]:
        succeeded_last = Case(When(outcome=ToolCall.Outcome.OK, then=Value(1)), default=Value(0))
        return [OrderBy(succeeded_last), "-created"]

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: ToolCall) -> str:
        return readable_duration(obj.duration_ms)

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


def readable_duration(milliseconds: float) -> str:
    """0.4893 -> "0.49 ms", 12.34 -> "12.3 ms", 1534 -> "1.53 s"."""
    if milliseconds >= 1000:
        return f"{milliseconds / 1000:.2f} s"
    if milliseconds >= 10:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:.2f} ms"
