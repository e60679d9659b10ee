"""The official Python SDK against the local vault: azure-identity's ClientSecretCredential with
the local token endpoint as authority, and the secrets, certificates and keys clients, with the
SDK's challenge verification left on (no verify_challenge_resource=False).

The clients are pinned to api-version 2025-07-01, the version the project's Rust crates send
(the Python packages pinned in requirements.txt default to a newer one).

Port: the Python SDK's challenge check compares the request's host *with its port* to the
resource (`default.vault.azure.net:18443` does not end in `.vault.azure.net`), unlike the Rust
crates (fact 4), so with the check on it cannot talk to a vault on a port other than 443. The
SDK is therefore given the vault URL without port (https://default.vault.azure.net, as a real
vault); when AZURE_KEYVAULT_URL names another port, this process connects port 443 of the local
vault names to it (and paging then needs a nextLink without that port).
"""

import urllib3.util.connection

import base64

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient

import pki
from kv import API_VERSION, unique


@pytest.fixture(scope="module", autouse=True)
def port_443_to_the_local_vault(env):
    suffix = "." + env.host_suffix
    original = urllib3.util.connection.create_connection

    def create_connection(address, *args, **kwargs):
        host, port = address
        if port == 443 and env.port not in (None, 443) and host.lower().endswith(suffix):
            port = env.port
        return original((host, port), *args, **kwargs)

    urllib3.util.connection.create_connection = create_connection
    yield
    urllib3.util.connection.create_connection = original


def sdk_vault_url(env):
    return f"https://{env.vault_host()}"


@pytest.fixture(scope="module")
def credential(env, kv):
    return ClientSecretCredential(
        env.tenant,
        env.client_id,
        env.client_secret,
        authority=env.authority,
        connection_verify=env.ca_file,
        disable_instance_discovery=True,
    )


def client(cls, env, credential):
    return cls(sdk_vault_url(env), credential, api_version=API_VERSION, connection_verify=env.ca_file)


def test_sdk_secrets_set_get_list_with_paging(env, credential):
    secrets = client(SecretClient, env, credential)
    prefix = unique("sdk")
    names = [f"{prefix}-{i:02d}" for i in range(27)]
    for n in names:
        secrets.set_secret(n, f"value-{n}", tags={"run": prefix})
    got = secrets.get_secret(names[3])
    assert got.value == f"value-{names[3]}" and got.properties.version and got.properties.tags == {"run": prefix}
    pages = list(secrets.list_properties_of_secrets().by_page())
    listed = {p.name for page in pages for p in page}
    assert set(names) <= listed, sorted(set(names) - listed)
    assert len(pages) >= 2, "more than 25 secrets take more than one page"
    versions = list(secrets.list_properties_of_secret_versions(names[0]))
    assert len(versions) == 1 and versions[0].version == secrets.get_secret(names[0]).properties.version
    secrets.close()


def test_sdk_certificate_import_and_secret(env, credential):
    chain = pki.Chain(unique("sdk"))
    certs = client(CertificateClient, env, credential)
    name = unique("sdkcert")
    policy = CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pkcs12)
    imported = certs.import_certificate(name, chain.pfx(password="sdk-pass"), password="sdk-pass", policy=policy)
    assert imported.cer == chain.leaf_der
    assert imported.properties.x509_thumbprint.hex() == __import__("hashlib").sha1(chain.leaf_der).hexdigest()
    fetched = certs.get_certificate(name)
    assert fetched.id == imported.id and fetched.secret_id == imported.secret_id
    secrets = client(SecretClient, env, credential)
    s = secrets.get_secret(name, imported.properties.version)
    assert s.properties.content_type == "application/x-pkcs12" and s.properties.managed is True
    assert s.properties.key_id == imported.key_id
    p = pki.load_pfx(base64.b64decode(s.value))
    assert p.key is not None and pki.public_der(p.key) == pki.public_der(chain.leaf_key)
    certs.close()
    secrets.close()


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_sdk_create_and_get_key(env, credential, kind):
    keys = client(KeyClient, env, credential)
    name = unique("sdkkey")
    if kind == "rsa":
        created = keys.create_rsa_key(name, size=2048)
        assert len(created.key.n) == 256 and created.key.e == b"\x01\x00\x01"
    else:
        created = keys.create_ec_key(name, curve="P-256")
        assert created.key.crv == "P-256" and len(created.key.x) == 32 and len(created.key.y) == 32
    got = keys.get_key(name)
    assert got.id == created.id and got.key.kty == created.key.kty
    assert got.properties.version == created.properties.version
    keys.close()


def test_sdk_challenge_verification_is_on(env, credential):
    """The SDK's challenge check (the vault host must end in the challenged resource's host,
    vault.azure.net) stays on: the round trips above ran with it."""
    secrets = SecretClient(sdk_vault_url(env), credential, api_version=API_VERSION, connection_verify=env.ca_file)
    policy = secrets._client._config.authentication_policy  # noqa: SLF001 - reading, not changing
    assert policy._verify_challenge_resource is True  # noqa: SLF001
    secrets.close()
