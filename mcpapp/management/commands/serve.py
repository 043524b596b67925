"""`manage.py serve [-b HOST] [-p PORT] [--reload]`: daphne serving this project (`make run` uses it).

The server is daphne's own command-line interface (`daphne.cli.CommandLineInterface`) with
`Server` below as its server class, serving `mcpsite.asgi:application` exactly as the
`daphne` command does. `Server` is the place for process-level behaviour of our own (what
it prints once it listens, how it shuts down); override daphne's hooks there rather than
wrapping or patching daphne.

With `--reload` this process runs no server itself: watchfiles (the file watcher uvicorn
uses; a Rust notify backend, so no polling) runs `manage.py serve` as a child process and
restarts it whenever a Python file or a template of the project changes.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daphne.cli import CommandLineInterface
from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from mcpapp.lifecycle import DrainingServer
from mcpsite.settings import where_set

APPLICATION = "mcpsite.asgi:application"


def _origin(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server(DrainingServer):
    """daphne's server for this project (start, SIGTERM drain: mcpapp.lifecycle), saying
    where it serves once the socket is bound; `serve` hands it to daphne's CLI."""

    def listen_success(self, port: Any) -> None:
        super().listen_success(port)
        address = port.getHost()
        if not hasattr(address, "port"):
            return
        # Only now does the socket accept connections: a client started on this line connects.
        sys.stdout.write(
            f"Serving on {_origin(address.host, address.port)}  (open {settings.PUBLIC_URL}/, "
            f"MCP endpoint {settings.PUBLIC_URL}/mcp)\n"
        )
        sys.stdout.flush()

    def listen_error(self, failure: Any) -> None:
        sys.stderr.write(
            f"Cannot listen: {failure.getErrorMessage()} "
            "(another server on that port? Stop it, or choose another: make run PORT=8788)\n"
        )
        sys.stderr.flush()
        super().listen_error(failure)


class ServeCommandLine(CommandLineInterface):
    """daphne's command line, building our `Server`."""

    server_class = Server


def watched_paths() -> list[Path]:
    """The project's own code and templates: every installed app under BASE_DIR, the settings
    package and the template directories (never .venv or node_modules, which are huge)."""
    base = Path(settings.BASE_DIR).resolve()
    environment = Path(sys.prefix).resolve()  # a virtualenv inside the checkout holds installed apps
    candidates = [Path(app.path).resolve() for app in apps.get_app_configs()]
    candidates.append(Path(sys.modules[settings.SETTINGS_MODULE].__file__ or base).resolve().parent)
    engines: list[dict[str, Any]] = settings.TEMPLATES
    for engine in engines:
        candidates.extend(Path(directory).resolve() for directory in engine.get("DIRS", []))
    paths: list[Path] = []
    for path in candidates:
        ours = path.is_relative_to(base) and path != base and not path.is_relative_to(environment)
        if ours and path.is_dir() and "site-packages" not in path.parts and path not in paths:
            paths.append(path)
    return sorted(paths)


class Command(BaseCommand):
    help = "Serve the project with daphne on HOST:PORT; --reload restarts it when code or templates change."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-b", "--bind", default="127.0.0.1", help="address to listen on (127.0.0.1)")
        parser.add_argument(
            "-p", "--port", type=int, default=None, help=f"port to listen on (PORT, now {settings.PORT})"
        )
        parser.add_argument(
            "--reload", action="store_true", help="restart when a .py file or a template changes"
        )

    def handle(self, *args: Any, bind: str, port: int | None, reload: bool, **options: Any) -> None:
        port = settings.PORT if port is None else port
        if port != settings.PORT and not os.environ.get("PUBLIC_URL"):
            # PUBLIC_URL follows PORT, and settings are read before the options are: start
            # again with PORT set, so that every advertised URL names the port we listen on.
            os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PORT": str(port)})  # noqa: S606
        self._warn_if_public_url_names_another_port(port)
        if reload:
            self._serve_with_reload(bind, port)
            return
        # daphne's own INFO lines repeat what the "Serving on" line says.
        for name in ("daphne.cli", "daphne.server"):
            logging.getLogger(name).setLevel(logging.WARNING)
        ServeCommandLine().run(["-b", bind, "-p", str(port), APPLICATION])

    def _warn_if_public_url_names_another_port(self, port: int) -> None:
        public = urlsplit(settings.PUBLIC_URL)
        advertised = public.port or (443 if public.scheme == "https" else 80)
        # Behind a proxy the ports differ by design (compose: nginx on 8787, workers on 8000).
        if settings.PUBLIC_IS_LOOPBACK and not settings.BEHIND_PROXY and advertised != port:
            self.stderr.write(
                f"Warning: PUBLIC_URL ({settings.PUBLIC_URL}, from {where_set('PUBLIC_URL')}) "
                f"names port {advertised} but the server listens on {port}, so clients will fail "
                f"discovery: remove PUBLIC_URL (it follows PORT) or set it to {_origin('localhost', port)}."
            )

    def _serve_with_reload(self, bind: str, port: int) -> None:
        from watchfiles import PythonFilter, run_process

        logging.getLogger("watchfiles").setLevel(logging.ERROR)  # we say what restarts, and why
        paths = watched_paths()
        base = Path(settings.BASE_DIR).resolve()
        self.stdout.write(
            f"Watching {', '.join(f'{p.relative_to(base)}/' for p in paths)} for changes; "
            "the server restarts on each change (Ctrl-C stops it)."
        )
        self.stdout.flush()
        child = [sys.executable, str(base / "manage.py"), "serve", "-b", bind, "-p", str(port)]

        def announce(changes: set[tuple[Any, str]]) -> None:
            names = sorted({str(Path(path).relative_to(base)) for _change, path in changes})
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self.stdout.write(f"Restarting: {shown} changed")
            self.stdout.flush()

        run_process(
            *paths,
            target=shlex.join(child),
            target_type="command",
            callback=announce,
            watch_filter=PythonFilter(extra_extensions=(".html", ".txt")),
        )
