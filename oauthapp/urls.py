"""Authorization server routes, at the root as Cloudflare's template has them.

A 2025-03-26 client that finds no metadata falls back to exactly /authorize, /token and
/register, so none of them has a trailing slash (a POST must never meet a redirect).
"""

from django.urls import path

from . import views

# Reversed by django-oauth-toolkit as "oauth2_provider:<name>" when it builds metadata.
oauth_urlpatterns = [
    path(
        ".well-known/oauth-authorization-server",
        views.AuthorizationServerMetadataView.as_view(),
        name="oauth-server-metadata",
    ),
    path(
        ".well-known/oauth-protected-resource",
        views.ProtectedResourceMetadataView.as_view(),
        name="oauth-resource-metadata",
    ),
    path(
        ".well-known/oauth-protected-resource/<path:resource_path>",
        views.ProtectedResourceMetadataView.as_view(),
        name="oauth-resource-metadata-path",
    ),
    path("register", views.RegisterView.as_view(), name="register"),
    path("authorize", views.AuthorizeView.as_view(), name="authorize"),
    path("token", views.TokenView.as_view(), name="token"),
    path("revoke", views.RevokeView.as_view(), name="revoke-token"),
    path("introspect", views.IntrospectView.as_view(), name="introspect"),
]

urlpatterns = [
    path("login", views.LoginView.as_view(), name="login"),
    path("login/deny", views.login_deny, name="login-deny"),
    path("logout", views.LogoutView.as_view(), name="logout"),
    path("account/apps", views.connected_apps, name="connected-apps"),
    path("account/tokens", views.personal_token_create, name="personal-token-create"),
    path("account/tokens/<int:token_id>/revoke", views.personal_token_revoke, name="personal-token-revoke"),
    # path: a client ID metadata document's client_id is a URL, slashes included.
    path("account/apps/<path:client_id>/revoke", views.connected_app_revoke, name="connected-app-revoke"),
    path("", views.home, name="home"),
]
