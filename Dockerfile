# syntax=docker/dockerfile:1
# The web image: daphne (manage.py serve: start, SIGTERM drain) serving the Django ASGI app
# on :8000 as an unprivileged user.
# Build: docker compose build (or docker build -t django-remote-mcp .)

FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /venv
# Only the runtime dependencies declared in pyproject.toml; this layer is rebuilt only when
# they change, not on every code edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && /venv/bin/pip install -r requirements.txt

FROM python:3.12-slim-bookworm
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=mcpsite.settings \
    COLLECTED_STATIC=true
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /venv /venv
COPY --chown=app:app manage.py ./
COPY --chown=app:app mcpsite ./mcpsite
COPY --chown=app:app oauthapp ./oauthapp
COPY --chown=app:app mcpapp ./mcpapp
COPY --chown=app:app templates ./templates
COPY --chown=app:app deploy/healthcheck.py ./deploy/healthcheck.py
# Hashed, compressed static files for whitenoise. The throwaway key only satisfies the
# production settings check during the build; the real one comes from the environment.
RUN DEBUG=false SECRET_KEY=collectstatic-only-build-time-placeholder-0123456789 \
        PUBLIC_URL=http://localhost DOTENV_PATH=/nonexistent \
        python manage.py collectstatic --noinput \
    && chown -R app:app /app/staticfiles
# The audit spool (compose mounts a volume here; a new volume takes this owner).
RUN install -d -o app -g app /app/var/audit-spool
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "deploy/healthcheck.py"]
# docker-compose.yml repeats this command (the deployment test reads it from there).
CMD ["python", "manage.py", "serve", "-b", "0.0.0.0", "-p", "8000"]
