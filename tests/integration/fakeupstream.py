"""A scriptable fake replica for failure tests (Python 3 stdlib).

    fake = FakeUpstream(mode="500")      # or "close" (read the request, close), "ok"
    fake.port, fake.requests (inference requests seen), fake.connections,
    fake.bodies (the raw bytes of each inference request's body)
    fake.stop()

GET /health answers 200, GET /metrics 404, GET /v1/models an empty list, so the
proxy's poller keeps the fake "up"; everything else follows <mode>.
"""

import socket
import threading


class FakeUpstream:
    def __init__(self, mode="ok"):
        self.mode = mode
        self.requests = 0
        self.connections = 0
        self.bodies = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self._stop = True
        try:
            self._sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _read_request(self, c, buf):
        while b"\r\n\r\n" not in buf:
            b = c.recv(65536)
            if not b:
                return None, buf
            buf += b
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        while len(rest) < length:
            b = c.recv(65536)
            if not b:
                return None, b""
            rest += b
        return (method, path, rest[:length]), rest[length:]

    def _serve(self, c):
        buf = b""
        try:
            while True:
                req, buf = self._read_request(c, buf)
                if req is None:
                    return
                method, path, body_in = req
                if path == "/health":
                    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    continue
                if path == "/metrics":
                    c.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                if path == "/v1/models":
                    body = b'{"object":"list","data":[]}'
                    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                              b"content-length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                with self._lock:
                    self.requests += 1
                    self.bodies.append(body_in)
                if self.mode == "close":
                    c.close()
                    return
                if self.mode == "500":
                    body = b'{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}'
                    c.sendall(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                              b"content-length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                body = b'{"object":"text_completion","choices":[{"text":"ok"}]}'
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            return
        finally:
            try:
                c.close()
            except OSError:
                pass
