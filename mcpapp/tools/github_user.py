"""The github_user tool: the caller's GitHub profile (the template's userInfoOctokit)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from mcpapp.tools.context import ToolError, current_caller, describe
from oauthapp import services


@describe(
    title="Your GitHub profile",
    read_only=True,
    idempotent=True,
    open_world=True,
    icon="mcpapp/tool-github.svg",
)
def github_user() -> dict[str, Any]:
    """Return your GitHub profile (login, name, email, ...) as GitHub's API reports it.

    Works when your account here is linked to GitHub: you logged in with GitHub, or linked
    GitHub on the connected-apps page.
    """
    caller = current_caller()
    try:
        return services.github_profile_fetch(user_id=caller.user_id)
    except services.GithubNotLinked:
        raise ToolError(
            f"No GitHub account is linked to {caller.username}. Log in with GitHub at "
            f"{settings.PUBLIC_URL}/login, or link one at {settings.PUBLIC_URL}/account/apps, then try again."
        ) from None
    except services.GithubUnavailable as exc:
        raise ToolError(str(exc)) from exc
