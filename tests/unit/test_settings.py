from pathlib import Path

import pytest

from vmctl.core.errors import ConfigError
from vmctl.wiring import settings

pytestmark = pytest.mark.unit


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        'database_url = "postgresql://file"\nredis_url = "redis://file"\n'
        'inventory = "/from/file.yaml"\n'
    )
    env = {"VMCTL_REDIS_URL": "redis://env", "VMCTL_INVENTORY": "/from/env.yaml"}
    s = settings.load({"inventory": "/from/flag.yaml"}, env, cfg)
    assert s.inventory == Path("/from/flag.yaml")
    assert s.redis_url == "redis://env"
    assert s.database_url == "postgresql://file"
    assert s.known_hosts == Path.home() / ".ssh" / "known_hosts"


def test_guest_keys_default_to_the_ssh_key_pub(tmp_path: Path) -> None:
    s = settings.load({}, {"VMCTL_SSH_KEY": "/k/id"}, tmp_path / "none.toml")
    assert s.authorized_key_files == (Path("/k/id.pub"),)
    s = settings.load({}, {"VMCTL_GUEST_SSH_KEYS": "/a.pub, /b.pub"}, tmp_path / "none.toml")
    assert s.authorized_key_files == (Path("/a.pub"), Path("/b.pub"))


def test_unknown_key_in_config_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('databse_url = "x"\n')
    with pytest.raises(ConfigError, match=r"config\.toml: unknown key 'databse_url'"):
        settings.load({}, {}, cfg)


def test_missing_database_url_says_how_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VMCTL_DATABASE_URL"):
        settings.load({}, {}, tmp_path / "none.toml").require_database()


def test_the_lock_timeout_is_seconds_from_env_or_file(tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    assert settings.load(environ={}, config_file=none).lock_timeout == 30.0
    env = {"VMCTL_LOCK_TIMEOUT": "2.5"}
    assert settings.load(environ=env, config_file=none).lock_timeout == 2.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ConfigError, match="VMCTL_LOCK_TIMEOUT: lock_timeout"):
            settings.load(environ={"VMCTL_LOCK_TIMEOUT": bad}, config_file=none)


def test_create_per_node_is_a_small_whole_number(tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    assert settings.load(environ={}, config_file=none).create_per_node == 4
    env = {"VMCTL_CREATE_PER_NODE": "2"}
    assert settings.load(environ=env, config_file=none).create_per_node == 2
    for bad in ("0", "many", "65", "1.5"):
        with pytest.raises(ConfigError, match="VMCTL_CREATE_PER_NODE: create_per_node"):
            settings.load(environ={"VMCTL_CREATE_PER_NODE": bad}, config_file=none)


def test_the_job_settings(tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    default = settings.load(environ={}, config_file=none)
    assert (default.queue, default.worker_concurrency, default.job_queue) == (False, 4, "vmctl")
    env = {"VMCTL_QUEUE": "yes", "VMCTL_WORKER_CONCURRENCY": "2", "VMCTL_JOB_QUEUE": "q2"}
    told = settings.load(environ=env, config_file=none)
    assert (told.queue, told.worker_concurrency, told.job_queue) == (True, 2, "q2")
    path = tmp_path / "config.toml"
    path.write_text("queue = true\n")
    assert settings.load(environ={}, config_file=path).queue is True
    with pytest.raises(ConfigError, match="VMCTL_QUEUE: queue must be true or false"):
        settings.load(environ={"VMCTL_QUEUE": "maybe"}, config_file=none)
    with pytest.raises(ConfigError, match="worker_concurrency must be a number 1-64"):
        settings.load(environ={"VMCTL_WORKER_CONCURRENCY": "0"}, config_file=none)
    assert default.job_keep_hours == 168
    assert (
        settings.load(environ={"VMCTL_JOB_KEEP_HOURS": "24"}, config_file=none).job_keep_hours == 24
    )
    for bad in ("0", "a week", "87601"):
        with pytest.raises(ConfigError, match="job_keep_hours must be hours"):
            settings.load(environ={"VMCTL_JOB_KEEP_HOURS": bad}, config_file=none)
