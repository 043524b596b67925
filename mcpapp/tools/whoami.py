from typing import Any

from django.contrib.auth import get_user_model

from .context import current_caller, describe


@describe(title="Who am I", read_only=True, idempotent=True, open_world=False)
def whoami() -> dict[str, Any]:
    """Tell who is calling: your username, email and linked GitHub login, the client's name and
    the scopes you granted it."""
    caller = current_caller()
    user = get_user_model().objects.get(pk=caller.user_id)
    github = user.social_auth.filter(provider="github").values_list("uid", "extra_data").first()
    github_login = None
    if github is not None:
        github_login = (github[1] or {}).get("login") or github[0]
    return {
        "username": user.get_username(),
        "email": user.email or None,
        "github_login": github_login,
        "client": caller.client_name,
        "client_id": caller.client_id,
        "scopes": list(caller.scopes),
    }
