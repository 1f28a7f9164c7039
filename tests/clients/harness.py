"""What the cross-language round trips use besides igbutton itself: a restartable
``igbutton-server --sandbox`` process, a TCP proxy that loses one answer, and a small HTTP
control API through which a client's test suite asks for either.

The control API (``IGBUTTON_CONTROL_URL``), answered only once the action is complete:

- ``POST /restart``: stop igbutton (SIGTERM, as an orchestrator does) and start a new process
  on the same ports and the same SQLite file -> 200 ``{"restarts": n}``.
- ``POST /drop-next-answer``: the proxy (``IGBUTTON_FLAKY_ADDR``) closes the connection that
  carries the next RPC answer, after igbutton produced it and before the client sees it (a
  failure after the send, so only a retry with the same request_id sends once) -> 204.
- ``GET /drops`` -> 200 ``{"dropped": n}``: answers the proxy dropped so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

_HEADERS = 0x1


class IgbuttonProcess:
    """``igbutton-server --sandbox`` on loopback; restartable on the ports it first got."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self._binary = binary
        self._workdir = workdir
        self.log_path = workdir / "server.log"
        self._db = workdir / "igbutton.db"
        self._ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._lock = threading.Lock()

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self._ports['grpc']}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['sandbox']}"

    def start(self) -> None:
        """Start on port 0 everywhere the first time, on the same ports after that."""
        ports_file = self._workdir / f"ports-{self.restarts}.json"
        grpc_port, http_port, webhook_port, sandbox_port = (
            self._ports.get(name, 0) for name in ("grpc", "http", "webhook", "sandbox")
        )
        env = {
            **os.environ,
            "IGBUTTON_GRPC__LISTEN": f"127.0.0.1:{grpc_port}",
            "IGBUTTON_HTTP__PORT": str(http_port),
            "IGBUTTON_WEBHOOK__PORT": str(webhook_port),
            "IGBUTTON_SANDBOX__PORT": str(sandbox_port),
            "IGBUTTON_STORAGE__SQLITE_PATH": str(self._db),
        }
        command = [self._binary, "--sandbox", "--ports-file", str(ports_file)]
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.restarts} ---\n".encode())
            log.flush()
            self._process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._ports = self._wait_for_ports(self._process, ports_file)

    def _wait_for_ports(self, proc: subprocess.Popen[bytes], ports_file: Path) -> dict[str, int]:
        """Poll, with a deadline, for the ports file the server writes once it is ready."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ports_file.exists():
                ports: dict[str, int] = json.loads(ports_file.read_text())
                return ports
            if proc.poll() is not None:
                raise RuntimeError(f"igbutton-server exited with {proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"igbutton-server not ready after {START_TIMEOUT} s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_TIMEOUT."""
        proc, self._process = self._process, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> int:
        """A new process on the same ports and SQLite file; the number of restarts so far."""
        with self._lock:
            self.stop()
            self.restarts += 1
            self.start()
            return self.restarts

    def state(self) -> str:
        """Whether the server still runs, for failure messages."""
        code = None if self._process is None else self._process.poll()
        return "still running" if code is None else f"exited with {code}"

    def tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-chars:]


class AnswerDropper:
    """A TCP proxy to an HTTP/2 (gRPC) server that, when armed, closes the connection on
    which the server's next response HEADERS frame arrives, instead of passing it on.

    The client then sees the connection fail before any answer (UNAVAILABLE, and the call
    is not committed, so a gRPC retry policy may repeat it), while the server has finished
    the call: for a send, the message went out.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.dropped = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="answer-dropper", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        """Drop the next response the server sends, on whichever connection."""
        self._armed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump_answers, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Client to server: bytes as they come."""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        self._close(source, sink)

    def _pump_answers(self, source: socket.socket, sink: socket.socket) -> None:
        """Server to client, frame by frame (the server side of HTTP/2 has no preface)."""
        buffer = b""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                buffer += data
                forward = 0
                while len(buffer) - forward >= 9:
                    # A frame header: 24-bit length, type, flags, then R + 31-bit stream id.
                    length = int.from_bytes(buffer[forward : forward + 3])
                    kind = buffer[forward + 3]
                    stream_id = int.from_bytes(buffer[forward + 5 : forward + 9]) & 0x7FFFFFFF
                    if kind == _HEADERS and stream_id != 0 and self._take_arm():
                        sink.sendall(buffer[:forward])
                        self._close(source, sink)
                        return
                    if len(buffer) - forward < 9 + length:
                        break
                    forward += 9 + length
                sink.sendall(buffer[:forward])
                buffer = buffer[forward:]
        self._close(source, sink)

    def _take_arm(self) -> bool:
        with self._lock:
            if not self._armed.is_set():
                return False
            self._armed.clear()
            self.dropped += 1
            return True

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._sockets.discard(sock)

    def close(self) -> None:
        """Stop accepting and close every proxied connection."""
        with self._lock:
            self._closed = True
            open_sockets = list(self._sockets)
        self._listener.close()
        self._close(*open_sockets)
        self._thread.join(timeout=5)


class ControlServer:
    """The HTTP control API described in the module docstring, on a loopback port."""

    def __init__(self, igbutton: IgbuttonProcess, dropper: AnswerDropper) -> None:
        handler = _handler(igbutton, dropper)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _handler(igbutton: IgbuttonProcess, dropper: AnswerDropper) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path == "/restart":
                try:
                    restarts = igbutton.restart()
                except RuntimeError as exc:
                    self._answer(500, {"error": str(exc)})
                    return
                self._answer(200, {"restarts": restarts})
            elif self.path == "/drop-next-answer":
                dropper.arm()
                self._answer(204, None)
            else:
                self._answer(404, {"error": f"no such control: {self.path}"})

        def do_GET(self) -> None:
            if self.path == "/drops":
                self._answer(200, {"dropped": dropper.dropped})
            else:
                self._answer(404, {"error": f"no such control: {self.path}"})

        def _answer(self, status: int, body: object) -> None:
            raw = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if raw:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test's output is the client's; requests are not news

    return Handler


@contextlib.contextmanager
def running(binary: str, workdir: Path) -> Iterator[tuple[IgbuttonProcess, AnswerDropper, str]]:
    """igbutton, the proxy in front of it and the control API; all stopped on exit."""
    igbutton = IgbuttonProcess(binary, workdir)
    with contextlib.ExitStack() as stack:
        stack.callback(igbutton.stop)
        igbutton.start()
        dropper = AnswerDropper(("127.0.0.1", int(igbutton.grpc_addr.rsplit(":", 1)[1])))
        stack.callback(dropper.close)
        control = ControlServer(igbutton, dropper)
        stack.callback(control.close)
        yield igbutton, dropper, control.url
