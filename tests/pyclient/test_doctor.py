"""``igbutton doctor`` as a subprocess against a real ``igbutton serve --sandbox`` process: the
sandbox account starts unsubscribed, the doctor says so with what to do, and ``--fix``
subscribes it through AccountService.SubscribeAccount."""

from __future__ import annotations

import json
import urllib.request

from igbutton_server.app import SANDBOX_ACCESS_TOKEN, SANDBOX_ACCOUNT_ID
from tests.pyclient.conftest import ServerProcess, run_cli


def lines(output: str) -> dict[str, str]:
    """The doctor's lines by check name (``ACCOUNT CHECK: ...``)."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        account, _, rest = line.partition(" ")
        assert account == SANDBOX_ACCOUNT_ID, line
        check, _, what = rest.partition(": ")
        found[check] = what
    return found


def unsubscribe(server: ServerProcess) -> None:
    """Make the sandbox account unsubscribed, as before anyone enabled it at Meta."""
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{server.sandbox_url}/_sandbox/accounts/{SANDBOX_ACCOUNT_ID}",
        data=json.dumps({"subscribed_fields": []}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        assert response.status == 204


def subscribed_fields(server: ServerProcess) -> list[str]:
    url = f"{server.sandbox_url}/_sandbox/accounts/{SANDBOX_ACCOUNT_ID}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
        fields: list[str] = json.load(response)["subscribed_fields"]
        return fields


def test_doctor_reports_the_unsubscribed_account_and_fix_subscribes_it(
    server_process: ServerProcess,
) -> None:
    # `make run` starts the sandbox account subscribed: all is well.
    fine = run_cli("doctor", "--addr", server_process.addr)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert all(what.startswith("OK") for what in lines(fine.stdout).values()), fine.stdout
    unsubscribe(server_process)
    first = run_cli("doctor", "--addr", server_process.addr)
    assert first.returncode == 1, first.stderr
    found = lines(first.stdout)
    assert list(found) == ["token", "refresh", "subscription", "app_secret", "webhook_self_test"]
    assert found["token"].startswith("OK the token works")
    assert found["subscription"].startswith("ERROR not subscribed to messaging_postbacks")
    assert found["subscription"].endswith(
        "-- run `igbutton doctor --fix` (AccountService.SubscribeAccount)"
    )
    assert found["app_secret"].startswith("OK")
    assert found["webhook_self_test"].startswith("OK igbutton's webhook at http://127.0.0.1:")
    assert subscribed_fields(server_process) == []

    fixed = run_cli("doctor", "--fix", "--addr", server_process.addr)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert (
        lines(fixed.stdout)["subscription"]
        == "FIXED now subscribed to messages, messaging_postbacks"
    )
    assert subscribed_fields(server_process) == ["messages", "messaging_postbacks"]

    again = run_cli("doctor", "--addr", server_process.addr)
    assert again.returncode == 0, again.stdout
    assert all(what.startswith("OK") for what in lines(again.stdout).values()), again.stdout
    assert SANDBOX_ACCESS_TOKEN not in first.stdout + fixed.stdout + again.stdout
    assert SANDBOX_ACCESS_TOKEN not in server_process.log_path.read_text()


def test_doctor_for_an_account_the_server_does_not_have(server_process: ServerProcess) -> None:
    result = run_cli("doctor", "--addr", server_process.addr, "--account", "999")
    assert result.returncode == 1
    assert result.stdout.strip() == (
        "999 account: ERROR not an account this caller may use -- check the id, or the "
        "caller's accounts in igbutton's callers setting"
    )


def test_doctor_without_a_server_is_one_line_and_exit_1() -> None:
    result = run_cli("doctor", "--addr", "127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("igbutton doctor: ")
