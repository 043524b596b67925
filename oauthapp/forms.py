"""Forms that parse what users submit on our pages into typed values."""

from __future__ import annotations

from django import forms

MAX_PERSONAL_TOKEN_DAYS = 3650


class PersonalTokenForm(forms.Form):
    """A new personal access token: a name, and an expiry in days (empty: no expiry)."""

    name = forms.CharField(max_length=100, strip=True)
    expires_in_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_PERSONAL_TOKEN_DAYS,
        help_text="Leave empty for a token that does not expire.",
    )
