"""Login throttling (django-axes) on /login and /admin/login/, behind a proxy (BEHIND_PROXY=true).

Each test speaks from its own client address (X-Forwarded-For, which the server trusts from
its proxy), so the locks of one test never touch another.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.live import OPERATOR, LiveServer, create_users, prepare_server
from tests.support.oauth import Browser, csrf_from

CAROL = ("carol", "carol-password-123")
DAVE = ("dave", "dave-password-456")
_addresses = (f"203.0.113.{n}" for n in itertools.count(10))
REFUSED = "Your username and password didn&#x27;t match, or there were too many failed attempts"


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("throttle")
    server = prepare_server(
        tmp,
        # Django's PBKDF2 hasher, counting the passwords it hashes (tests/support/counting_hasher.py).
        DJANGO_SETTINGS_MODULE="tests.support.counting_hasher",
        PASSWORD_HASH_COUNT_FILE=str(tmp / "hashed.txt"),
        BEHIND_PROXY="true",
        LOGIN_FAILURE_LIMIT="3",
        LOGIN_ADDRESS_FAILURE_LIMIT="6",
        LOGIN_LOCKOUT_SECONDS="600",
    )
    create_users(
        server.env,
        (*CAROL, {"is_staff": True}),
        (*DAVE, {}),
        (*OPERATOR, {"is_staff": True, "is_superuser": True}),
    )
    server.start()
    yield server
    server.stop()


def browser_from(server: LiveServer, address: str) -> Browser:
    browser = Browser(server.url)
    browser.http.headers["X-Forwarded-For"] = address
    return browser


def log_in(
    server: LiveServer, address: str, username: str, password: str, path: str = "/login"
) -> httpx.Response:
    browser = browser_from(server, address)
    page = browser.http.get(path)
    assert page.status_code == 200, page.text
    answer = browser.http.post(
        path,
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf_from(page.text)},
    )
    browser.close()
    return answer


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert REFUSED in response.text
    assert "sessionid" not in response.cookies


def test_a_few_failures_lock_that_account_from_that_address_and_the_right_password_is_refused(
    throttled: LiveServer,
) -> None:
    address = next(_addresses)
    wrong = [log_in(throttled, address, CAROL[0], "wrong-password") for _ in range(3)]
    for response in wrong:
        assert_refused(response)
    locked = log_in(throttled, address, *CAROL)
    assert_refused(locked)
    # Locked and wrong look exactly alike: same status, same message, same page.
    assert locked.text.replace(csrf_from(locked.text), "") == wrong[-1].text.replace(
        csrf_from(wrong[-1].text), ""
    )
    # The admin login is locked too, with the same message.
    admin = log_in(throttled, address, *CAROL, path="/admin/login/")
    assert admin.status_code == 200 and REFUSED in admin.text
    # Another account behind the same address is unaffected, as is carol from elsewhere.
    assert log_in(throttled, address, *DAVE).status_code == 302
    assert log_in(throttled, next(_addresses), *CAROL).status_code == 302
    kinds = throttled.sql(
        "SELECT kind FROM oauthapp_oauthevent WHERE address = ? AND username = 'carol' ORDER BY id",
        (address,),
    )
    assert [kind for (kind,) in kinds] == [
        "login_refused",
        "login_refused",
        "login_throttled",
        "login_throttled",
        "login_throttled",
    ]


def passwords_hashed(server: LiveServer) -> int:
    counted = Path(server.env["PASSWORD_HASH_COUNT_FILE"])
    return len(counted.read_text().splitlines()) if counted.exists() else 0


def test_a_locked_attempt_hashes_the_password_as_a_wrong_one_does(throttled: LiveServer) -> None:
    """No way to tell a locked account by the time its answer takes: the work is the same.

    Counted rather than timed: the server's password hasher notes each password it hashes
    (Django's PBKDF2, unchanged). A wrong password costs one hash, and so must a locked attempt.
    """
    address = next(_addresses)

    def attempt(username: str, password: str) -> int:
        before = passwords_hashed(throttled)
        assert_refused(log_in(throttled, address, username, password))
        return passwords_hashed(throttled) - before

    assert [attempt(CAROL[0], "wrong-password") for _ in range(3)] == [1, 1, 1]
    # Locked now: the right password, a wrong one, and a name nobody has all cost one hash.
    assert attempt(*CAROL) == 1
    assert attempt(CAROL[0], "another-wrong-password") == 1
    assert attempt("nobody-by-this-name", "whatever") == 1


def test_many_failures_from_one_address_stop_password_spraying(throttled: LiveServer) -> None:
    address = next(_addresses)
    for n in range(6):
        assert_refused(log_in(throttled, address, f"sprayed-{n}", "Winter2026!"))
    assert_refused(log_in(throttled, address, *DAVE))
    assert log_in(throttled, next(_addresses), *DAVE).status_code == 302


def test_operators_see_and_lift_locks_in_admin(throttled: LiveServer) -> None:
    address = next(_addresses)
    for _ in range(3):
        assert_refused(log_in(throttled, address, CAROL[0], "wrong-password"))
    operator = browser_from(throttled, next(_addresses))
    assert operator.login(*OPERATOR).status_code == 302
    listing = operator.http.get("/admin/axes/accessattempt/", params={"q": address})
    assert listing.status_code == 200 and address in listing.text
    ((pk,),) = throttled.sql("SELECT id FROM axes_accessattempt WHERE ip_address = ?", (address,))
    page = operator.http.get(f"/admin/axes/accessattempt/{pk}/delete/")
    assert page.status_code == 200
    lifted = operator.http.post(
        f"/admin/axes/accessattempt/{pk}/delete/",
        data={"csrfmiddlewaretoken": csrf_from(page.text), "post": "yes"},
    )
    assert lifted.status_code == 302
    assert log_in(throttled, address, *CAROL).status_code == 302
    operator.close()


@pytest.mark.parametrize("forwarded", ["not-an-address", "", "999.1.1.1", "203.0.113.7, <script>"])
def test_a_forwarded_header_that_is_not_an_address_falls_back_to_the_peer(
    throttled: LiveServer, forwarded: str
) -> None:
    name = f"forwarded-{abs(hash(forwarded))}"
    response = httpx.post(
        f"{throttled.url}/register",
        json={"client_name": name, "redirect_uris": ["http://localhost:3000/cb"]},
        headers={"X-Forwarded-For": forwarded},
    )
    assert response.status_code == 201, response.text
    assert throttled.sql("SELECT registered_from FROM oauthapp_application WHERE name = ?", (name,)) == [
        ("127.0.0.1",)
    ]
    refused = log_in(throttled, forwarded, name, "wrong-password")
    assert_refused(refused)


def test_a_successful_login_does_not_clear_the_spraying_count_of_its_address(throttled: LiveServer) -> None:
    address = next(_addresses)
    for n in range(3):
        assert_refused(log_in(throttled, address, f"guess-{n}", "Winter2026!"))
    assert log_in(throttled, address, *DAVE).status_code == 302  # the sprayer's own valid account
    for n in range(3, 6):
        assert_refused(log_in(throttled, address, f"guess-{n}", "Winter2026!"))
    assert_refused(log_in(throttled, address, *CAROL))
