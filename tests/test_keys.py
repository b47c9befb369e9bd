"""The key directory and the key ring (SPEC §4): real files in tmp_path, real processes."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from issuer.errors import KeyFileError, StartupError
from issuer.keys import KeyDirectory, KeyPolicy, KeyRing
from issuer.keys.directory import LOCK
from issuer.keys.ring import MANIFEST, data_key_id, thumbprint

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ["ES256", "RS256", "EdDSA"]
KTY = {"ES256": "EC", "RS256": "RSA", "EdDSA": "OKP"}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}
LIFETIME = 905.0  # access token TTL + leeway
MAX_AGE = 300.0
T0 = 1_700_000_000.0


def policy(alg: str = "ES256", **options: Any) -> KeyPolicy:
    options.setdefault("jwks_max_age", MAX_AGE)
    options.setdefault("rotation_days", 30)
    options.setdefault("retired_lifetime", LIFETIME)
    return KeyPolicy(alg, **options)


def load(
    path: Path, alg: str = "ES256", *, data_key: bytes | None = None, now: float | None = None
) -> KeyRing:
    return KeyDirectory(path).load(policy(alg), data_key=data_key, now=now)


def jwks(ring: KeyRing) -> dict[str, dict[str, str]]:
    """The published JWKS, by kid."""
    document = json.loads(ring.jwks_json)
    return {entry["kid"]: entry for entry in document["keys"]}


def sign(ring: KeyRing, kid: str | None = None) -> str:
    key = ring.active if kid is None else ring.verification_key(kid)
    assert key is not None
    return jwt.encode(
        {"sub": "user-1"}, key.private_key, algorithm=key.alg, headers={"kid": key.kid}
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of the directory but the lock, with its bytes."""
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != LOCK
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_line_error(directory: Path, alg: str = "ES256") -> str:
    with pytest.raises(KeyFileError) as caught:
        load(directory, alg)
    assert isinstance(caught.value, StartupError)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# -- creation and reload


def test_first_load_creates_one_key_of_each_kind_with_private_modes(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    ring = load(directory)
    assert set(snapshot(directory)) == {
        MANIFEST,
        f"signing-{ring.active.kid}.pem",
        f"data-{ring.active_data_kid}.key",
    }
    assert mode(directory) == 0o700
    for path in directory.iterdir():
        assert mode(path) == 0o600, path.name
    assert ring.active.state == "active"
    assert [key.kid for key in ring.keys] == [ring.active.kid]
    assert len(ring.data_keys[ring.active_data_kid]) == 32


def test_manifest_records_times_not_states(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    ring = load(directory, now=T0)
    manifest = json.loads((directory / MANIFEST).read_bytes())
    assert manifest == {
        "version": 1,
        "generation": 1,
        "signing": [{"kid": ring.active.kid, "alg": "ES256", "created_at": T0, "activates_at": T0}],
        "data": {"active": ring.active_data_kid, "keys": [ring.active_data_kid]},
    }


def test_second_load_reuses_the_keys_and_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    first = load(directory)
    files = snapshot(directory)
    second = load(directory)
    assert second.active.kid == first.active.kid
    assert second.active_data_kid == first.active_data_kid
    assert second.data_keys == first.data_keys
    assert second.jwks_json == first.jwks_json
    assert snapshot(directory) == files


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_jwks_publishes_only_public_members(tmp_path: Path, alg: str) -> None:
    ring = load(tmp_path / "keys", alg)
    document = json.loads(ring.jwks_json)
    (entry,) = document["keys"]
    assert not PRIVATE_MEMBERS & set(entry), entry
    assert entry["kid"] == ring.active.kid
    assert entry["kty"] == KTY[alg]
    assert entry["alg"] == alg
    assert entry["use"] == "sig"
    # The kid is the RFC 7638 thumbprint of the published key.
    assert thumbprint(entry) == entry["kid"]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_jwks_entry_verifies_a_token_signed_with_the_private_key(tmp_path: Path, alg: str) -> None:
    ring = load(tmp_path / "keys", alg)
    token = sign(ring)
    (entry,) = jwks(ring).values()
    assert jwt.get_unverified_header(token)["kid"] == entry["kid"]
    claims = jwt.decode(token, jwt.PyJWK(entry), algorithms=[alg])
    assert claims == {"sub": "user-1"}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_jwks_entry_rejects_a_token_from_another_key(tmp_path: Path, alg: str) -> None:
    ours = load(tmp_path / "ours", alg)
    theirs = load(tmp_path / "theirs", alg)
    (entry,) = jwks(ours).values()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(sign(theirs), jwt.PyJWK(entry), algorithms=[alg])


def test_rfc7638_thumbprint_test_vector() -> None:
    # RFC 7638 §3.1: the JWK and its SHA-256 thumbprint.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
            "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
            "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
            "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# -- algorithm change and retirement


def test_changing_the_algorithm_retires_the_old_key_then_drops_it(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    first = load(directory, "ES256", now=T0)
    old_kid = first.active.kid
    old_token = sign(first)

    changed_at = T0 + 3600
    second = load(directory, "RS256", now=changed_at)
    assert second.active.alg == "RS256"
    assert second.active.kid != old_kid
    # The new algorithm signs at once: verifiers refetch the JWKS on its unknown kid.
    assert second.active.activates_at == changed_at
    old = second.verification_key(old_kid)
    assert old is not None
    assert old.state == "retired"
    assert old.alg == "ES256"
    assert old.retired_at == changed_at
    assert second.valid_until == changed_at + LIFETIME
    assert second.active_data_kid == first.active_data_kid
    published = jwks(second)
    assert set(published) == {old_kid, second.active.kid}
    assert published[old_kid]["alg"] == "ES256"
    assert published[second.active.kid]["alg"] == "RS256"
    # A token the retired key signed still verifies from the JWKS.
    assert jwt.decode(old_token, jwt.PyJWK(published[old_kid]), algorithms=["ES256"])

    # A restart within the lifetime keeps both, with the same active key.
    later = load(directory, "RS256", now=changed_at + LIFETIME - 1)
    assert later.active.kid == second.active.kid
    assert set(jwks(later)) == {old_kid, second.active.kid}

    # Once every token it signed has expired, the retired key is gone.
    gone = load(directory, "RS256", now=changed_at + LIFETIME + 1)
    assert gone.active.kid == second.active.kid
    assert set(jwks(gone)) == {second.active.kid}
    assert gone.verification_key(old_kid) is None
    assert gone.algorithms == ("RS256",)


# -- damaged files are never replaced


def corrupt_manifest(text: bytes) -> Callable[[Path, KeyRing], Path]:
    def corrupt(directory: Path, ring: KeyRing) -> Path:
        (directory / MANIFEST).write_bytes(text)
        return directory / MANIFEST

    return corrupt


def edit_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path, KeyRing], Path]:
    def corrupt(directory: Path, ring: KeyRing) -> Path:
        path = directory / MANIFEST
        manifest = json.loads(path.read_bytes())
        change(manifest)
        path.write_text(json.dumps(manifest))
        return path

    return corrupt


def truncate_manifest(directory: Path, ring: KeyRing) -> Path:
    path = directory / MANIFEST
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def set_entry(**fields: Any) -> Callable[[dict[str, Any]], None]:
    """Overwrite fields of the first signing entry."""

    def change(manifest: dict[str, Any]) -> None:
        manifest["signing"][0].update(fields)

    return change


def unlist_active_data_key(manifest: dict[str, Any]) -> None:
    manifest["data"]["keys"] = []


def replace_signing_key(pem: bytes | Callable[[], bytes]) -> Callable[[Path, KeyRing], Path]:
    def corrupt(directory: Path, ring: KeyRing) -> Path:
        path = directory / f"signing-{ring.active.kid}.pem"
        path.write_bytes(pem() if callable(pem) else pem)
        return path

    return corrupt


def truncate_signing_key(directory: Path, ring: KeyRing) -> Path:
    path = directory / f"signing-{ring.active.kid}.pem"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def private_pem(key: Any) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem


def public_pem() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def replace_data_key(content: Callable[[bytes], bytes]) -> Callable[[Path, KeyRing], Path]:
    def corrupt(directory: Path, ring: KeyRing) -> Path:
        path = directory / f"data-{ring.active_data_kid}.key"
        path.write_bytes(content(path.read_bytes()))
        return path

    return corrupt


def delete_manifest(directory: Path, ring: KeyRing) -> Path:
    (directory / MANIFEST).unlink()
    return directory / MANIFEST


DAMAGE = {
    "manifest not json": corrupt_manifest(b"{this is not json"),
    "manifest empty": corrupt_manifest(b""),
    "manifest truncated": truncate_manifest,
    "manifest a json list": corrupt_manifest(b"[]"),
    "manifest unknown version": edit_manifest(lambda manifest: manifest.update(version=99)),
    "manifest without signing": edit_manifest(lambda manifest: manifest.pop("signing")),
    "manifest data not a table": edit_manifest(lambda manifest: manifest.update(data=[])),
    "manifest entry without kid": edit_manifest(lambda m: m["signing"][0].pop("kid")),
    "manifest unknown alg": edit_manifest(set_entry(alg="HS256")),
    "manifest alg of the wrong case": edit_manifest(set_entry(alg="es256")),
    "manifest entry without activates_at": edit_manifest(
        lambda m: m["signing"][0].pop("activates_at")
    ),
    "manifest entry without created_at": edit_manifest(lambda m: m["signing"][0].pop("created_at")),
    "manifest activates_at a string": edit_manifest(set_entry(activates_at="2024-01-01")),
    "manifest activates_at a boolean": edit_manifest(set_entry(activates_at=True)),
    "manifest activates_at null": edit_manifest(set_entry(activates_at=None)),
    "manifest revoked_at a string": edit_manifest(set_entry(revoked_at="yesterday")),
    "manifest revoked_at a boolean": edit_manifest(set_entry(revoked_at=True)),
    "manifest revoked_at a list": edit_manifest(set_entry(revoked_at=[T0])),
    "manifest active data key not listed": edit_manifest(unlist_active_data_key),
    "manifest data keys not a list": edit_manifest(lambda m: m["data"].update(keys="abc")),
    "manifest deleted, key files remain": delete_manifest,
    "signing key garbage": replace_signing_key(
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    ),
    "signing key empty": replace_signing_key(b""),
    "signing key truncated": truncate_signing_key,
    "signing key is a public key": replace_signing_key(public_pem),
    "signing key of the wrong type (Ed25519)": replace_signing_key(
        lambda: private_pem(ed25519.Ed25519PrivateKey.generate())
    ),
    "signing key of the wrong curve (P-384)": replace_signing_key(
        lambda: private_pem(ec.generate_private_key(ec.SECP384R1()))
    ),
    "signing key another ES256 key": replace_signing_key(
        lambda: private_pem(ec.generate_private_key(ec.SECP256R1()))
    ),
    "data key truncated": replace_data_key(lambda text: text[: len(text) // 2]),
    "data key empty": replace_data_key(lambda text: b""),
    "data key not base64": replace_data_key(lambda text: b"!!!! not base64 !!!!\n"),
    "data key of another key": replace_data_key(
        lambda text: base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=") + b"\n"
    ),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_key_file_stops_loading_and_is_left_untouched(
    tmp_path: Path, damage: Callable[[Path, KeyRing], Path]
) -> None:
    directory = tmp_path / "keys"
    ring = load(directory)
    damaged = damage(directory, ring)
    files = snapshot(directory)

    message = one_line_error(directory)

    assert damaged.name in message
    # Nothing was generated over the damage, nothing rewritten, nothing added.
    assert snapshot(directory) == files


def test_damaged_key_file_stops_loading_under_another_algorithm_too(tmp_path: Path) -> None:
    # A changed ISSUER_SIGNING_ALG must not be a way around a corrupt manifest.
    directory = tmp_path / "keys"
    load(directory, "ES256")
    (directory / MANIFEST).write_bytes(b"{this is not json")
    files = snapshot(directory)
    assert MANIFEST in one_line_error(directory, "RS256")
    assert snapshot(directory) == files


@pytest.mark.parametrize(
    "make_path",
    [
        lambda tmp_path: tmp_path / "file" / "keys",
        lambda tmp_path: tmp_path / "file",
    ],
    ids=["under a regular file", "a regular file"],
)
def test_unusable_keys_directory_names_the_setting(
    tmp_path: Path, make_path: Callable[[Path], Path]
) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    message = one_line_error(make_path(tmp_path))
    assert "ISSUER_KEYS_DIR" in message
    assert (tmp_path / "file").read_text() == "not a directory\n"


# -- the data key


def test_data_key_override_is_active_and_file_keys_still_load(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    from_file = load(directory)
    file_kid = from_file.active_data_kid
    override = os.urandom(32)

    ring = load(directory, data_key=override)

    assert ring.active_data_kid == data_key_id(override)
    assert ring.active_data_kid != file_kid
    assert ring.data_keys[ring.active_data_kid] == override
    assert ring.data_keys[file_kid] == from_file.data_keys[file_kid]
    # The override comes from the environment and is not copied to disk.
    for content in snapshot(directory).values():
        assert base64.urlsafe_b64encode(override).rstrip(b"=") not in content


def test_data_key_id_is_pinned_and_distinguishes_keys() -> None:
    # The id is stored beside every ciphertext: it must never change for a given key.
    assert data_key_id(bytes(32)) == "aQffzM_4XEJcKVIM"
    assert data_key_id(bytes(range(32))) != data_key_id(bytes(range(1, 33)))


# -- several processes at once

CHILD = """
import sys
from pathlib import Path
from issuer.keys import KeyDirectory, KeyPolicy
print("ready", flush=True)
sys.stdin.readline()
policy = KeyPolicy(sys.argv[2], jwks_max_age=300, rotation_days=30, retired_lifetime=905)
ring = KeyDirectory(Path(sys.argv[1])).load(policy)
print(ring.active.kid, ring.active_data_kid, flush=True)
"""


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_processes_starting_together_make_exactly_one_key(tmp_path: Path, alg: str) -> None:
    directory = tmp_path / "keys"
    env = {name: value for name, value in os.environ.items() if not name.startswith("ISSUER_")}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), alg],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        # Each has imported issuer; release them all at once.
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            results.append(out.strip())
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert len(set(results)) == 1, results
    kid, data_kid = results[0].split()
    # One key of each kind, and no temporary file left behind.
    assert {path.name for path in directory.iterdir()} == {
        MANIFEST,
        LOCK,
        f"signing-{kid}.pem",
        f"data-{data_kid}.key",
    }


def test_load_waits_for_a_writer_that_holds_the_lock(tmp_path: Path) -> None:
    """A reader must not mistake another process's half-written directory for damage.

    The writer (this test) holds the documented ``.lock`` and has written its key files but
    not yet ``keyring.json``, exactly as a starting worker does between the two steps. A
    concurrent ``load`` must wait for the lock, then read the finished manifest.
    """
    source = tmp_path / "source"
    expected = load(source)
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    outcome: dict[str, Any] = {}

    def reader() -> None:
        try:
            outcome["ring"] = load(directory)
        except Exception as error:  # reported by the asserts below
            outcome["error"] = error

    lock = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in snapshot(source):
            if name != MANIFEST:
                shutil.copy2(source / name, directory / name)
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), f"load finished while a writer held the lock: {outcome}"
        shutil.copy2(source / MANIFEST, directory / MANIFEST)
    finally:
        os.close(lock)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["ring"].active.kid == expected.active.kid
