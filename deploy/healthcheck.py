"""Container healthcheck: exit 0 when this worker's /healthz answers 200, else 1.

Standard library only (the slim image has no curl). Sends PUBLIC_URL's host as Host so an
explicit ALLOWED_HOSTS does not have to list the container's loopback address.
"""

from __future__ import annotations

import http.client
import os
import sys
from urllib.parse import urlsplit


def main() -> int:
    host = urlsplit(os.environ.get("PUBLIC_URL", "http://localhost")).hostname or "localhost"
    port = int(os.environ.get("HEALTHCHECK_PORT", "8000"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
    try:
        connection.request("GET", "/healthz", headers={"Host": host})
        response = connection.getresponse()
        body = response.read(2000).decode(errors="replace")
    except OSError as exc:
        print(f"healthz unreachable: {exc}")
        return 1
    finally:
        connection.close()
    if response.status != 200:
        print(f"healthz {response.status}: {body}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
