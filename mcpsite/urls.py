from django.contrib import admin
from django.urls import include, path

from oauthapp.urls import oauth_urlpatterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include((oauth_urlpatterns, "oauth2_provider"), namespace="oauth2_provider")),
    path("", include("social_django.urls", namespace="social")),
    path("", include("mcpapp.urls")),
    path("", include("oauthapp.urls")),
]

# A backend outage met outside a view is a 503 too (oauthapp.middleware).
handler500 = "oauthapp.middleware.server_error"
