"""Development mode (the embedded WeChat emulator) and the ``issuer`` command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from click.testing import CliRunner

from issuer import ConfigError, create_app
from issuer.cli import WALKTHROUGH, main
from issuer.config import DEVELOPMENT_APPID
from issuer.store.sqlite import SCHEMA_VERSION
from tests.conftest import APPID, ROOT, SECRET, free_port


def test_walkthrough_runs_end_to_end_against_the_embedded_emulator(dev_server):
    minted = requests.post(
        dev_server + "/_wechat/dev/wx.login", data={"user": "alice"}, timeout=5
    ).json()
    assert minted["appid"] == DEVELOPMENT_APPID
    login = requests.post(dev_server + "/auth/login", data={"code": minted["code"]}, timeout=5)
    assert login.status_code == 200, login.text
    tokens = login.json()
    me = requests.get(
        dev_server + "/me", timeout=5, headers={"Authorization": f"Bearer {tokens['access_token']}"}
    ).json()
    assert me["openid"] == minted["openid"]
    refreshed = requests.post(
        dev_server + "/auth/refresh", timeout=5, data={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200
    assert requests.get(dev_server + "/.well-known/jwks.json", timeout=5).json()["keys"]


def test_the_printed_walkthrough_names_only_real_endpoints(dev_server):
    text = WALKTHROUGH.format(url=dev_server)
    for path in (
        "/_wechat/dev/wx.login",
        "/auth/login",
        "/me",
        "/auth/refresh",
        "/.well-known/jwks.json",
    ):
        assert dev_server + path in text


def test_production_has_no_emulator(client):
    assert client.post("/_wechat/dev/wx.login").status_code == 404
    assert client.get("/_wechat/sns/jscode2session").status_code == 404


def test_emulator_is_refused_in_production(tmp_path):
    with pytest.raises(ConfigError, match="ISSUER_WECHAT_APPID"):
        create_app(
            {
                "env": "production",
                "database_url": f"sqlite:///{tmp_path / 'x.db'}",
                "keys_dir": str(tmp_path / "keys"),
            },
            environ={},
        )


def test_issuer_dev_refuses_production(monkeypatch):
    result = CliRunner().invoke(main, ["dev"], env={"ISSUER_ENV": "production"})
    assert result.exit_code != 0
    assert "ISSUER_ENV" in result.output
    assert "Traceback" not in result.output


def test_cli_reports_a_bad_setting_in_one_line(tmp_path):
    result = CliRunner().invoke(
        main,
        ["db", "upgrade"],
        env={
            "ISSUER_ENV": "development",
            "ISSUER_LEEWAY": "99",
            "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
        },
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "ISSUER_LEEWAY" in lines[0]


def test_db_upgrade(tmp_path):
    result = CliRunner().invoke(
        main,
        ["db", "upgrade"],
        env={
            "ISSUER_ENV": "development",
            "ISSUER_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}",
            "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
        },
    )
    assert result.exit_code == 0, result.output
    assert f"version {SCHEMA_VERSION}" in result.output
    assert (tmp_path / "up.db").exists()


def test_the_printed_walkthrough_works_when_pasted_into_bash(dev_server):
    script = "set -euo pipefail\n" + WALKTHROUGH.format(url=dev_server).split("\n", 3)[3]
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"is_new_user":true' in out
    assert '"nickName":"alice"' in out  # decrypted
    assert '"phone_number":"138' in out
    assert '{"valid":true}' in out
    assert '"keys":[' in out
    assert '"nickname":"Alice"' in out  # the fill-in, kept
    assert re.search(r'"avatar_url":"http://127\.0\.0\.1:\d+/avatars/', out)  # re-encoded
    assert "error" not in out


def readme_blocks(after: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(after) :]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_walkthrough_is_the_printed_one():
    printed = textwrap.dedent(WALKTHROUGH.format(url="http://127.0.0.1:8000").split("\n", 3)[3])
    assert readme_blocks("## Try it")[0].strip() == printed.strip()


def test_the_readme_curl_examples_for_the_other_endpoints_work(dev_server):
    walkthrough, others = readme_blocks("## Try it")[:2]
    script = "set -euo pipefail\n" + (walkthrough + others).replace(
        "http://127.0.0.1:8000", dev_server
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert '"jwks_uri"' in result.stdout
    assert "3.1.0\n" in result.stdout
    assert re.search(r"HTTP/1\.[01] 204", result.stdout)
    assert re.search(r"HTTP/1\.[01] 401", result.stdout)
    assert result.stdout.rstrip().endswith("204")  # the account deleted


def test_issuer_dev_logs_no_secret_or_code(tmp_path, wechat, wechat_url):
    # A configured app in development mode reaches WeChat through ISSUER_WECHAT_API_BASE
    # (here the loopback WeChat of the tests), never through the embedded emulator.
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ISSUER_", "FLASK_"))},
        "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
        "ISSUER_DATABASE_URL": f"sqlite:///{tmp_path / 'dev.db'}",
        "ISSUER_WECHAT_APPID": APPID,
        "ISSUER_WECHAT_SECRET": SECRET,
        "ISSUER_WECHAT_API_BASE": wechat_url,
    }
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "issuer"), "dev", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(base + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert requests.post(base + "/_wechat/dev/wx.login", timeout=5).status_code == 404
        code = wechat.mint_code(APPID, "x")
        login = requests.post(base + "/auth/login", data={"code": code}, timeout=5)
        assert login.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
    output = log.read_text()
    assert "POST /auth/login 200" in output  # the log was written: the checks below mean something
    assert SECRET not in output
    assert code not in output
    assert login.json()["refresh_token"] not in output


# -- development mode stays on loopback, under `issuer dev`, with its own app


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.168.1.20", "devbox.lan", "127.0.0.1.nip.io"]
)
def test_issuer_dev_refuses_a_non_loopback_bind(tmp_path, host):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ISSUER_", "FLASK_"))},
        "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
        "ISSUER_DATABASE_URL": f"sqlite:///{tmp_path / 'dev.db'}",
    }
    command = [str(ROOT / ".venv" / "bin" / "issuer"), "dev", "--host", host]
    # Its own process group: a server that did start is killed whole, and the test fails.
    process = subprocess.Popen(
        [*command, "--port", str(free_port())],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"issuer dev served on {host}")
    assert process.returncode != 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "--host" in lines[0]
    assert "loopback" in lines[0]
    assert not (tmp_path / "keys").exists()  # refused before anything was made


def test_development_is_refused_by_the_production_entry_point(tmp_path):
    with pytest.raises(ConfigError) as caught:
        create_app(
            {
                "env": "development",
                "database_url": f"sqlite:///{tmp_path / 'x.db'}",
                "keys_dir": str(tmp_path / "keys"),
            },
            environ={},
            entry="wsgi",
        )
    assert str(caught.value).startswith("ISSUER_ENV: development mode")
    assert not (tmp_path / "keys").exists()


def run_gunicorn(tmp_path, env, target="wsgi:app"):
    """gunicorn with the repo's gunicorn.conf.py, to its exit; its status and output.

    A gunicorn that keeps serving is killed with its workers (its own process group), and
    the test fails.
    """
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", target],
            cwd=ROOT,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")},
                "ISSUER_BIND": f"127.0.0.1:{free_port()}",
                "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
                "ISSUER_DATABASE_URL": f"sqlite:///{tmp_path / 'dev.db'}",
                "WEB_CONCURRENCY": "1",
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        status = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"gunicorn started in development mode:\n{log.read_text()}")
    return status, log.read_text()


@pytest.mark.parametrize("target", ["wsgi:app", "issuer:create_app()"])
@pytest.mark.parametrize("where", ["environment", "file"])
def test_development_never_starts_under_gunicorn(tmp_path, target, where):
    if where == "file":
        config = tmp_path / "issuer.toml"
        config.write_text('env = "development"\n')
        env = {"ISSUER_CONFIG": str(config)}
    else:
        env = {"ISSUER_ENV": "development"}
    status, output = run_gunicorn(tmp_path, env, target)
    assert status != 0, output
    assert any(line.count("ISSUER_ENV: development mode") for line in output.splitlines()), output
    if target == "wsgi:app":  # the entry point reports in one line; a bare factory raises
        assert "Traceback" not in output, output
    assert not (tmp_path / "keys").exists()
