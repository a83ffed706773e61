"""Running commands on nodes over SSH (Fabric/Paramiko), host keys always verified.

Commands are argument lists, quoted once with shlex.join; nothing from users is pasted into a
shell string. Transport problems become NodeUnreachable, non-zero exits RemoteCommandFailed.
"""

from __future__ import annotations

import shlex
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import fabric
import invoke
import paramiko

from vmctl.core.errors import NodeUnreachable, RemoteCommandFailed
from vmctl.core.nodecmd import describe
from vmctl.services.ports import Result


@dataclass(frozen=True)
class SshTarget:
    node: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    connect_timeout: float = 10.0


KEEPALIVE_S = 5  # an SSH keepalive this often keeps bytes in flight on a quiet connection...
DEAD_AFTER_S = 10  # ...and TCP gives the connection up when they go unanswered this long


def _notice_dead_links(conn: fabric.Connection) -> None:
    """Make a dead link (cable cut, node gone) end the connection within ~15 s.

    Without this, a command on a link that dies hangs until the link comes back: invoke's
    timeout closes the channel but then waits for an exit status that never comes. With keepalives
    and TCP_USER_TIMEOUT the kernel fails the socket, paramiko closes every channel and the
    command returns (the runner then reports NodeUnreachable)."""
    transport = conn.client.get_transport()
    if transport is None:
        return
    transport.set_keepalive(KEEPALIVE_S)
    sock = transport.sock
    if hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_AFTER_S * 1000)


class FabricRunner:
    """A Runner over one Fabric connection, opened on first use."""

    def __init__(self, target: SshTarget) -> None:
        self.node = target.node
        self._target = target
        self._conn: fabric.Connection | None = None
        # Several threads (`create --count`) share the connection, each command a channel of its
        # own; it is opened once, and its one SFTP session is used by one upload at a time.
        self._opening = threading.Lock()
        self._sftp = threading.Lock()

    def _connection(self) -> fabric.Connection:
        with self._opening:
            if self._conn is not None:
                return self._conn
            return self._open()

    def _open(self) -> fabric.Connection:
        t = self._target
        conn = fabric.Connection(
            host=t.host,
            user=t.user,
            port=t.port,
            connect_timeout=t.connect_timeout,
            connect_kwargs={
                "key_filename": [str(t.key_file)],
                "look_for_keys": False,
                "allow_agent": False,
            },
        )
        # Fabric trusts unknown hosts by default: vmctl never does.
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            conn.client.load_host_keys(str(t.known_hosts))
            conn.open()
        except FileNotFoundError as exc:
            raise NodeUnreachable(f"known_hosts file {t.known_hosts} does not exist") from exc
        except paramiko.BadHostKeyException as exc:
            raise NodeUnreachable(
                f"node {t.node} ({t.host}:{t.port}): host key does not match {t.known_hosts}"
            ) from exc
        except paramiko.SSHException as exc:
            raise NodeUnreachable(f"node {t.node} ({t.host}:{t.port}): {exc}") from exc
        except EOFError as exc:  # the server went away during the handshake
            raise NodeUnreachable(f"node {t.node} ({t.host}:{t.port}): connection closed") from exc
        except (TimeoutError, OSError) as exc:
            raise NodeUnreachable(f"node {t.node} ({t.host}:{t.port}): {exc}") from exc
        _notice_dead_links(conn)
        self._conn = conn
        return conn

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        command = shlex.join(argv)
        what = describe(argv)
        conn = self._connection()
        if stdin is not None:
            result = self._run_with_input(conn, command, what, stdin, timeout)
            if check and result.exit_status != 0:
                raise RemoteCommandFailed(self.node, what, result.exit_status, result.stderr)
            return result
        try:
            res = conn.run(
                command,
                hide=True,
                warn=True,
                timeout=timeout,
                in_stream=False,  # never read this process's stdin
            )
        except invoke.exceptions.CommandTimedOut as exc:
            self.close()  # the link may be dead: the next command opens a new connection
            raise RemoteCommandFailed(self.node, what, -1, f"timed out after {timeout} s") from exc
        except (paramiko.SSHException, OSError, EOFError, invoke.exceptions.ThreadException) as exc:
            self.close()
            detail = str(exc).strip() or type(exc).__name__
            raise NodeUnreachable(f"node {self.node}: connection lost: {detail}") from exc
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():  # the link died under the command
            self.close()
            raise NodeUnreachable(f"node {self.node}: connection lost while running `{what}`")
        result = Result(stdout=res.stdout, stderr=res.stderr, exit_status=res.exited)
        if check and result.exit_status != 0:
            raise RemoteCommandFailed(self.node, what, result.exit_status, result.stderr)
        return result

    def _run_with_input(
        self, conn: fabric.Connection, command: str, what: str, data: bytes, timeout: float | None
    ) -> Result:
        """The command on a channel of its own, ``data`` on its standard input (sent whole, as
        bytes: invoke's stdin relay would decode it in chunks, and pause between them)."""
        transport = conn.client.get_transport()
        channel = None
        try:
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("no transport")
            channel = transport.open_session()
            channel.settimeout(timeout)
            channel.exec_command(command)
            channel.sendall(data)
            channel.shutdown_write()
            out = channel.makefile("rb", -1).read()  # until the command closes its output
            err = channel.makefile_stderr("rb", -1).read()
            status = channel.recv_exit_status()
        except TimeoutError as exc:
            self.close()
            raise RemoteCommandFailed(self.node, what, -1, f"timed out after {timeout} s") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            detail = str(exc).strip() or type(exc).__name__
            raise NodeUnreachable(f"node {self.node}: connection lost: {detail}") from exc
        finally:
            if channel is not None:
                channel.close()
        if status == -1:  # the channel closed without an exit status: the link died
            self.close()
            raise NodeUnreachable(f"node {self.node}: connection lost while running `{what}`")
        return Result(
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            exit_status=status,
        )

    def put(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        conn = self._connection()
        try:
            with self._sftp:
                sftp = conn.sftp()
                with sftp.open(remote_path, "wb") as f:
                    f.chmod(mode)
                    f.write(data)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport = conn.client.get_transport()
            if isinstance(exc, EOFError) or transport is None or not transport.is_active():
                self.close()  # the link died under the upload
                detail = str(exc).strip() or type(exc).__name__
                raise NodeUnreachable(f"node {self.node}: connection lost: {detail}") from exc
            raise RemoteCommandFailed(self.node, f"sftp put {remote_path}", -1, str(exc)) from exc

    def stream(
        self, argv: Sequence[str], on_line: Callable[[str], None], stop: threading.Event
    ) -> None:
        """Run a long command, handing each line of its output to ``on_line`` as it comes, until
        it ends (RemoteCommandFailed if it failed) or ``stop`` is set (the command's standard
        input is then closed: a command that ends on EOF leaves nothing behind on the node)."""
        command, what = shlex.join(argv), describe(argv)
        transport = self._connection().client.get_transport()
        channel = None
        pending = b""
        try:
            if transport is None:
                raise paramiko.SSHException("no transport")
            channel = transport.open_session()
            channel.exec_command(command)
            channel.settimeout(0.5)
            while not stop.is_set():
                try:
                    data = channel.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    on_line(line.decode(errors="replace"))
            if stop.is_set():
                return
            if not transport.is_active():
                raise NodeUnreachable(f"node {self.node}: connection lost while running `{what}`")
            status = channel.recv_exit_status()
            if status != 0:
                stderr = b""
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                raise RemoteCommandFailed(self.node, what, status, stderr.decode(errors="replace"))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise NodeUnreachable(f"node {self.node}: connection lost: {exc}") from exc
        finally:
            if channel is not None:
                channel.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
