"""A TCP proxy on loopback that a test can cut and restore: a server "gone for a while" (a
network partition, a restarting S3 endpoint) without losing the server's own state, which
an in-memory server such as moto's would lose if it were stopped."""

from __future__ import annotations

import socket
import threading

from conftest import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:port to target_port. cut(): every open connection is closed and
    new ones are refused (nothing listens); restore(): it listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.open: set[socket.socket] = set()
        self.restore()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self.lock:
            self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            sockets, self.open = self.open, set()
        if listener is not None:  # shutdown wakes the thread blocked in accept(); close alone would not
            with_ignored(listener.shutdown, socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with_ignored(sock.shutdown, socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:  # cut meanwhile
                    client.close(), upstream.close()
                    return
                self.open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with_ignored(sink.shutdown, socket.SHUT_WR)


def with_ignored(call, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        call(*args)
    except OSError:
        pass
