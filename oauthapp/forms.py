"""Forms that parse what users submit on our pages into typed values.

The login forms are Django's, with one message for a wrong password and a throttled login.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from .throttle import login_refused_message

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


class LoginForm(AuthenticationForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_messages = {**self.error_messages, "invalid_login": login_refused_message()}


class AdminLoginForm(AdminAuthenticationForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_messages = {**self.error_messages, "invalid_login": login_refused_message()}
