#!/usr/bin/env python3
"""ringdb binary-protocol client (YAWNDB v3) over mutual TLS.

Standard library only (Python 3.11+). Copy this file into an agent and use it
as a module, or run it as a command:

    from ringdb_client import Client

    with Client("127.0.0.1", 2011, ca="ca.pem", cert="agent.pem",
                key="agent-key.pem", server_name="localhost") as c:
        c.send("traffic-client42-in", 1349695853, 1024)
        c.send("traffic-client42-in", 1349695913, 1, special=True)  # special #1
    # leaving the block flushes and closes; the server never replies, but a
    # rejected client certificate raises RingdbError (an OSError)

A client that is never closed is still flushed and closed when it is
garbage-collected or, at the latest, when the interpreter exits (atexit), so
``Client(...).send(...)`` in a one-off script does not lose its samples; but
only close() (or ``with``) reports a failure to the caller, so prefer them.

    python3 ringdb_client.py --host 127.0.0.1 --port 2011 --ca ca.pem \\
        --cert agent.pem --key agent-key.pem [--server-name localhost] [FILE]

Input lines (FILE or stdin): ``PATH TIMESTAMP VALUE`` separated by
whitespace; VALUE is a decimal unsigned integer, or ``@N`` for special index N
(1-based index into the rule's additional_values). Blank lines and lines whose
first non-blank character is ``#`` are skipped. The whole input is parsed
before anything is sent; a bad line prints ``line K: ...`` and exits 2.
Connection or TLS failure (including a server that rejects the client
certificate) exits 1. Success prints ``sent N frames`` to stderr.

Frame format: ``u16 BE length`` + payload ``u8 version=3 | u8 special |
u64 BE timestamp | u64 BE value | path bytes`` (path 1..1024 bytes of UTF-8,
no '/').
"""

import argparse
import atexit
import select
import socket
import ssl
import struct
import sys
import time
import weakref

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_PATH_BYTES",
    "MAX_LINE_BYTES",
    "MAX_U64",
    "encode_frame",
    "parse_line",
    "parse_lines",
    "Client",
    "RingdbError",
    "main",
]

PROTOCOL_VERSION = 3
MAX_PATH_BYTES = 1024
MAX_LINE_BYTES = 2048  # input lines longer than this (without newline) are errors
MAX_U64 = 2**64 - 1
DEFAULT_BATCH_BYTES = 65536
DEFAULT_TIMEOUT = 30.0
REJECT_WAIT_MIN = 0.05  # seconds; see Client.close()
REJECT_WAIT_MAX = 1.0

_HEADER = struct.Struct(">HBBQQ")  # length, version, special, ts, value
_PAYLOAD_FIXED = _HEADER.size - 2  # 18 bytes of payload before the path


def _path_bytes(path):
    """Validate a path and return its bytes; raise ValueError if invalid."""
    if isinstance(path, str):
        try:
            raw = path.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("path is not valid UTF-8 (contains lone surrogates)") from None
    elif isinstance(path, (bytes, bytearray, memoryview)):
        raw = bytes(path)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("path is not valid UTF-8") from None
    else:
        raise TypeError(f"path must be str or bytes, not {type(path).__name__}")
    if not raw:
        raise ValueError("path is empty (must be 1..1024 bytes)")
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(f"path is {len(raw)} bytes long (must be 1..{MAX_PATH_BYTES} bytes)")
    if b"/" in raw:
        raise ValueError("path contains '/'")
    return raw


def _check_u64(name, v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, not {type(v).__name__}")
    if v < 0:
        raise ValueError(f"{name} is negative ({v}); must be in 0..2^64-1")
    if v > MAX_U64:
        raise ValueError(f"{name} {v} does not fit in 64 bits; must be in 0..2^64-1")


def encode_frame(path, ts, value, special=False):
    """Return one length-prefixed protocol frame as bytes.

    path: str or bytes, 1..1024 bytes of UTF-8 without '/'.
    ts: timestamp in seconds, 0..2^64-1.
    value: 0..2^64-1; with special=True, the 1-based index into the rule's
    additional_values (so it must be at least 1).
    """
    raw = _path_bytes(path)
    _check_u64("timestamp", ts)
    _check_u64("value", value)
    if special and value == 0:
        raise ValueError("special index must be at least 1 (it is 1-based)")
    return _HEADER.pack(_PAYLOAD_FIXED + len(raw), PROTOCOL_VERSION,
                        1 if special else 0, ts, value) + raw


# --- input lines ----------------------------------------------------------

def _show(tok, limit=40):
    """Quote a token for an error message: at most `limit` bytes, bytes
    outside printable ASCII as \\xNN (the C client prints the same)."""
    text = "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in tok[:limit])
    return "'" + text + ("...'" if len(tok) > limit else "'")


def _parse_u64(tok):
    """Strict decimal u64 (ASCII digits only); None if not one."""
    if not tok or not tok.isdigit():  # bytes.isdigit() is ASCII-only
        return None
    n = int(tok)
    return n if n <= MAX_U64 else None


def parse_line(line, lineno):
    """Parse one input line (bytes or str, trailing newline allowed).

    Returns None for blank and comment lines, else (path_bytes, ts, value,
    special). Raises ValueError("line K: expected ...") for a bad line.
    """
    if isinstance(line, str):
        line = line.encode("utf-8", "surrogateescape")
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]

    def bad(what):
        return ValueError(f"line {lineno}: {what}")

    if len(line) > MAX_LINE_BYTES:
        raise bad(f"expected a line of at most {MAX_LINE_BYTES} bytes, got {len(line)} bytes")
    if b"\0" in line:
        raise bad("expected text without NUL bytes")
    stripped = line.lstrip()
    if not stripped or stripped.startswith(b"#"):
        return None
    fields = line.split()  # ASCII whitespace only, same as C isspace()
    if len(fields) != 3:
        raise bad(f"expected 3 fields PATH TIMESTAMP VALUE, got {len(fields)}")
    path, ts_tok, val_tok = fields
    if len(path) > MAX_PATH_BYTES:
        raise bad(f"expected PATH of 1..{MAX_PATH_BYTES} bytes, got {len(path)} bytes")
    if b"/" in path:
        raise bad("expected PATH without '/'")
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("expected PATH in valid UTF-8") from None
    ts = _parse_u64(ts_tok)
    if ts is None:
        raise bad("expected TIMESTAMP as a decimal unsigned integer below 2^64, got "
                  + _show(ts_tok))
    special = val_tok.startswith(b"@")
    value = _parse_u64(val_tok[1:] if special else val_tok)
    if value is None or (special and value == 0):
        raise bad("expected VALUE as a decimal unsigned integer below 2^64 or @N "
                  "with N >= 1, got " + _show(val_tok))
    return path, ts, value, special


def parse_lines(lines):
    """Parse an iterable of lines; return a list of (path, ts, value, special).

    Raises ValueError on the first bad line.
    """
    out = []
    for k, line in enumerate(lines, 1):
        rec = parse_line(line, k)
        if rec is not None:
            out.append(rec)
    return out


def _split_input(data):
    """Split raw input bytes into lines on '\\n' only (no trailing empty line)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


# --- TLS client -----------------------------------------------------------

class RingdbError(OSError):
    """Connection, TLS or write failure; the message says which step failed
    and why, and __cause__ holds the original exception."""


class Client:
    """Buffered, fire-and-forget sender over mutual TLS.

    The constructor loads the TLS files, connects and does the handshake,
    verifying the server certificate against `ca` and `server_name` (default
    `host`; a DNS name or an IP address). send() buffers frames and writes
    once the buffer reaches batch_bytes; flush() writes the buffer; close()
    flushes and closes (see close() for the one thing it waits for).
    `timeout` bounds connecting, the handshake and each write.
    Failures raise RingdbError (an OSError); bad samples raise ValueError.
    """

    def __init__(self, host, port, ca, cert, key, server_name=None,
                 batch_bytes=DEFAULT_BATCH_BYTES, *, timeout=DEFAULT_TIMEOUT):
        if batch_bytes < 1:
            raise ValueError("batch_bytes must be at least 1")
        self.batch_bytes = batch_bytes
        self.host, self.port = host, port
        self._buf = bytearray()
        self._sock = None

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert + host name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=_readable(ca))
        except OSError as e:
            raise RingdbError(f"cannot load CA file {ca}: {_reason(e)}") from e
        try:
            ctx.load_cert_chain(certfile=_readable(cert), keyfile=_readable(key))
        except OSError as e:
            raise RingdbError(f"cannot load certificate {cert} with key {key}: "
                              f"{_reason(e)}") from e

        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise RingdbError(f"cannot connect to {host} port {port}: {_reason(e)}") from e
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # server_hostname may be a DNS name or an IP literal (matched
            # against IP SANs); no SNI is sent for IP literals.
            t0 = time.monotonic()
            self._sock = ctx.wrap_socket(raw, server_hostname=server_name or host)
            self._handshake_s = time.monotonic() - t0
        except OSError as e:
            raw.close()
            raise RingdbError(f"TLS handshake with {host} port {port} failed: "
                              f"{_reason(e)}") from e
        except BaseException:
            raw.close()
            raise

        _open_clients.add(self)

    def send(self, path, ts, value, special=False):
        """Buffer one sample; write the buffer once it reaches batch_bytes.

        Buffered samples are written by flush(), close(), leaving a ``with``
        block, or (best effort, errors printed to stderr) when the client is
        garbage-collected or the interpreter exits."""
        frame = encode_frame(path, ts, value, special)
        self._check_open()
        self._buf += frame
        if len(self._buf) >= self.batch_bytes:
            self.flush()

    def send_encoded(self, frames):
        """Buffer bytes that already hold whole frames (from encode_frame)."""
        self._check_open()
        self._buf += frames
        if len(self._buf) >= self.batch_bytes:
            self.flush()

    def flush(self):
        """Write everything buffered."""
        self._check_open()
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            try:
                self._sock.sendall(data)
            except OSError as e:
                why = _server_verdict(self._sock) or _reason(e)
                raise RingdbError(f"write to {self.host} port {self.port} failed: {why}") from e

    def close(self):
        """Flush, check that the server has not rejected us, close. Idempotent.

        Raises RingdbError if the server rejected the connection. Under
        TLS 1.3 the server checks the client certificate only after the
        client's handshake is over, and says no with an alert and nothing
        when it says yes; so with TLS 1.3 close() waits for such an alert
        for twice the handshake time (50 ms .. 1 s) before closing. Nothing
        else is read: the server never replies.
        """
        if self._sock is None:
            return
        sock = self._sock
        _open_clients.discard(self)
        try:
            self.flush()
            wait = 0.0
            if sock.version() == "TLSv1.3":
                wait = min(max(2 * self._handshake_s, REJECT_WAIT_MIN), REJECT_WAIT_MAX)
            why = _server_verdict(sock, wait)
            if why:
                raise RingdbError(f"{self.host} port {self.port} rejected the connection: {why}")
        finally:
            self._sock = None
            self._buf.clear()
            _quiet_close(sock)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            # Deliver what was already accepted, but let the original
            # exception propagate rather than a secondary one.
            try:
                self.close()
            except Exception:
                pass
        return False

    def _check_open(self):
        if self._sock is None:
            raise ValueError("client is closed")

    def _close_unattended(self, when):
        """close() for a client its user forgot: nobody is there to catch
        an exception, so a failure is printed to stderr."""
        try:
            self.close()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            try:
                print(f"ringdb_client: {self.host} port {self.port}: "
                      f"unsent samples at {when}: {e}", file=sys.stderr)
            except Exception:  # noqa: BLE001 - stderr gone at shutdown
                pass

    def __del__(self):
        # Best effort: runs when the last reference goes (CPython: at once
        # for `Client(...).send(...)`); getattr because __init__ may have
        # failed before the socket existed.
        if getattr(self, "_sock", None) is not None:
            self._close_unattended("garbage collection")


# Clients not yet closed; atexit closes them (a weak set, so it keeps none
# alive on its own).
_open_clients = weakref.WeakSet()


@atexit.register
def _close_open_clients():
    for client in list(_open_clients):
        client._close_unattended("exit")


def _readable(path):
    """Return path if it can be opened, else raise OSError naming the problem."""
    with open(path, "rb"):
        pass
    return path


def _reason(e):
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        # "TLSV1_ALERT_UNKNOWN_CA" -> "tlsv1 alert unknown ca", as OpenSSL prints it
        return e.reason.replace("_", " ").lower() if e.reason else str(e)
    if isinstance(e, TimeoutError) or isinstance(e, socket.timeout):
        return "timed out"
    return e.strerror or str(e)


def _server_verdict(sock, wait=0.0):
    """Consume what the server sends within `wait` seconds and return why it
    dropped the connection (a TLS alert, a reset), or None.

    ringdb sends nothing after the handshake unless it rejects the client;
    other TLS servers may send TLS 1.3 session tickets, and consuming them
    keeps close() from turning into a TCP reset. Leaves the socket
    non-blocking.
    """
    deadline = time.monotonic() + wait
    try:
        sock.setblocking(False)
        while True:
            try:
                if not sock.recv(65536):
                    return None  # the server closed cleanly
            except ssl.SSLWantReadError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    return None
    except (ssl.SSLWantWriteError, BlockingIOError):
        return None
    except OSError as e:
        return _reason(e)


def _quiet_close(sock):
    """Send close_notify (best effort, without waiting for the server's) and close."""
    try:
        sock.setblocking(False)
        sock.unwrap()
    except (OSError, ValueError):
        pass
    try:
        sock.close()
    except OSError:
        pass


# --- command line ---------------------------------------------------------

def _port(text):
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a number in 1..65535, got {text!r}")
    return int(text)


def _arg_parser():
    p = argparse.ArgumentParser(
        description="Send samples to ringdb's binary socket (YAWNDB v3) over mutual TLS. "
                    "Input lines: PATH TIMESTAMP VALUE (VALUE: unsigned integer, or @N "
                    "for special index N); blank lines and #-comments are skipped.")
    p.add_argument("--host", required=True, help="server host name or IP address")
    p.add_argument("--port", required=True, type=_port, help="server port (socket listener)")
    p.add_argument("--ca", required=True, help="CA certificate (PEM) that signed the server")
    p.add_argument("--cert", required=True, help="client certificate chain (PEM)")
    p.add_argument("--key", required=True, help="client private key (PEM)")
    p.add_argument("--server-name",
                   help="name to verify in the server certificate (default: --host)")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="input file (default: standard input)")
    return p


def main(argv=None):
    args = _arg_parser().parse_args(argv)
    try:
        if args.file is None or args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except OSError as e:
        print(f"cannot read input: {e}", file=sys.stderr)
        return 2

    try:
        records = parse_lines(_split_input(data))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    del data
    frames = bytearray()
    for path, ts, value, special in records:
        frames += encode_frame(path, ts, value, special)
    n = len(records)
    del records

    try:
        client = Client(args.host, args.port, args.ca, args.cert, args.key,
                        server_name=args.server_name)
        try:
            view = memoryview(frames)
            for off in range(0, len(view), client.batch_bytes):
                client.send_encoded(view[off:off + client.batch_bytes])
        finally:
            client.close()
    except OSError as e:
        print(f"ringdb_client: {e}", file=sys.stderr)
        return 1
    print(f"sent {n} frames", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
