"""A ClickHouse HTTP interface in front of chDB (current ClickHouse, in-process), for tests/chdb_types.rs.

It speaks just what bgmigrate's client sends: SQL in the body (and/or ?query=), ?database=, `INSERT ... FORMAT
RowBinary` with a streamed (chunked) body, and a SELECT with one external table (multipart/form-data). Every
statement runs in the real engine:

* `INSERT INTO t (cols) FORMAT RowBinary`: the body is saved to a file and decoded by ClickHouse itself with
  `INSERT INTO t (cols) SELECT * FROM file(path, 'RowBinary', '<cols with their system.columns types>')`.
* an external table `name`: its TabSeparated data is saved to a file and `IN name` becomes
  `IN (SELECT * FROM file(path, 'TabSeparated', '<structure>'))`.

Usage: python3 server.py DATA_DIR; prints `ready PORT` once listening on 127.0.0.1. Errors answer HTTP 500 with
ClickHouse's message, as the server does. Connections are served in threads, statements one at a time.
"""

import os
import re
import sys
import urllib.parse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chdb import session as chs

DATA = sys.argv[1]
SESSION = chs.Session(os.path.join(DATA, "session"))
COUNTER = [0]
# One statement at a time: the session is not shared across threads, but connections are (keep-alive).
LOCK = threading.Lock()


def run(sql, fmt="TabSeparated"):
    result = SESSION.query(sql, fmt)
    error = getattr(result, "error_message", lambda: "")()
    if error:
        raise RuntimeError(error)
    return result.bytes() if hasattr(result, "bytes") else bytes(result)


def scratch(suffix):
    COUNTER[0] += 1
    return os.path.join(DATA, f"req{COUNTER[0]}.{suffix}")


def quote(text):
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def answer(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        body = self.body()
        try:
            database = params.get("database", "default")
            with LOCK:
                run(f"USE `{database}`")
                result = self.statement(params, body, database)
            self.answer(200, result)
        except Exception as err:  # noqa: BLE001 - every failure is the server's answer
            message = str(err)
            if not message.startswith("Code:"):
                message = "Code: 1000. DB::Exception: " + message
            self.answer(500, message.encode())

    def statement(self, params, body, database):
        query = params.get("query")
        insert = re.match(r"\s*INSERT INTO (`[^`]+`|\w+) \((.*)\) FORMAT RowBinary\s*$", query or "", re.S)
        if insert:
            table, columns = insert.group(1), insert.group(2)
            names = [c.strip().strip("`") for c in columns.split(",")]
            types = dict(
                line.split("\t", 1)
                for line in run(
                    f"SELECT name, type FROM system.columns WHERE database = {quote(database)} "
                    f"AND table = {quote(table.strip('`'))}",
                    "TabSeparatedRaw",
                ).decode().splitlines()
            )
            structure = ", ".join(f"`{n}` {types[n]}" for n in names)
            path = scratch("rowbinary")
            with open(path, "wb") as f:
                f.write(body)
            run(f"INSERT INTO {table} ({columns}) SELECT * FROM file({quote(path)}, 'RowBinary', {quote(structure)})")
            return b""
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            boundary = content_type.split("boundary=", 1)[1].encode()
            part = body.split(b"--" + boundary)[1]
            header, data = part.split(b"\r\n\r\n", 1)
            name = re.search(rb'name="([^"]+)"', header).group(1).decode()
            path = scratch("tsv")
            with open(path, "wb") as f:
                f.write(data[: -len(b"\r\n")])
            structure = params[f"{name}_structure"]
            query = re.sub(
                rf"\bIN {name}\b",
                f"IN (SELECT * FROM file({quote(path)}, 'TabSeparated', {quote(structure)}))",
                query,
            )
            sql = query
        else:
            sql = (query + "\n" if query else "") + body.decode()
        sql = sql.strip().rstrip(";")
        fmt = "TabSeparated"
        match = re.search(r"\s+FORMAT\s+(\w+)\s*$", sql)
        if match:
            fmt, sql = match.group(1), sql[: match.start()]
        return run(sql, fmt)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()
