"""Fixtures of the Key Vault conformance suite (see README.md).

A missing variable or an unreachable vault fails every test with a message naming
`make env-up`; nothing is skipped.
"""

import pytest

from kv import HINT, NOTES, Env, KeyVault, TokenEndpoint, fail


@pytest.fixture(scope="session")
def env():
    return Env()


@pytest.fixture(scope="session")
def kv(env):
    vault = KeyVault(env)
    r = vault.request("GET", "/secrets", token=None, validate=False)
    if r.status != 401:
        fail(f"the local Key Vault at {env.url} answered {r.status} to an unauthenticated "
             f"GET /secrets (expected the 401 challenge); is it the local vault? {HINT}")
    yield vault
    vault.cleanup()


@pytest.fixture(scope="session")
def tokens(env):
    return TokenEndpoint(env)


def pytest_terminal_summary(terminalreporter):
    if NOTES:
        terminalreporter.section("local Key Vault behaviour notes")
        for n in NOTES:
            terminalreporter.write_line(f"- {n}")
