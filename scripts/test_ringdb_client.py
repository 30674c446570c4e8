"""Tests for ringdb_client.py (and the C client, if built).

Run: python3 -m unittest discover -s scripts -p 'test_*.py'

The end-to-end tests need the `openssl` command (to make throw-away
certificates) and are skipped without it; the C client test is skipped
unless scripts/c/ringdb_send has been built (make -C scripts/c).
"""

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ringdb_client as rc  # noqa: E402

VECTOR = bytes.fromhex("0025 0300 0000 0000 5072 b96d 0000 0000 0000 0400") + b"interface_in-ae0.69"
# RINGDB_SEND overrides which C client binary is tested (e.g. a sanitizer build).
C_CLIENT = os.environ.get("RINGDB_SEND") or os.path.join(HERE, "c", "ringdb_send")


class EncodeFrameTest(unittest.TestCase):
    def test_vector(self):
        frame = rc.encode_frame("interface_in-ae0.69", 1349695853, 1024)
        self.assertEqual(frame, VECTOR)
        self.assertEqual(len(frame), 39)

    def test_bytes_path_and_special(self):
        frame = rc.encode_frame(b"traffic-x", 1, 2, special=True)
        self.assertEqual(frame[:4], bytes([0x00, 0x1b, 0x03, 0x01]))
        self.assertEqual(frame[-9:], b"traffic-x")

    def test_limits(self):
        rc.encode_frame("a" * 1024, 0, 2**64 - 1)
        rc.encode_frame("é", 2**64 - 1, 0)

    def test_errors(self):
        cases = [
            (("", 1, 1), "empty"),
            (("a" * 1025, 1, 1), "1025 bytes"),
            (("a/b", 1, 1), "'/'"),
            ((b"\xff", 1, 1), "UTF-8"),
            (("a", -1, 1), "timestamp is negative"),
            (("a", 2**64, 1), "timestamp"),
            (("a", 1, -1), "value is negative"),
            (("a", 1, 2**64), "64 bits"),
        ]
        for args, needle in cases:
            with self.subTest(args=args[:1]), self.assertRaises(ValueError) as cm:
                rc.encode_frame(*args)
            self.assertIn(needle, str(cm.exception))
        with self.assertRaisesRegex(ValueError, "1-based"):
            rc.encode_frame("a", 1, 0, special=True)
        with self.assertRaises(TypeError):
            rc.encode_frame("a", 1.5, 1)


class ParseLineTest(unittest.TestCase):
    def test_good(self):
        self.assertEqual(rc.parse_line("interface_in-ae0.69 1349695853 1024\n", 1),
                         (b"interface_in-ae0.69", 1349695853, 1024, False))
        self.assertEqual(rc.parse_line(b"  p-x\t0   @3\r\n", 1), (b"p-x", 0, 3, True))
        self.assertEqual(rc.parse_line("p 18446744073709551615 18446744073709551615", 1),
                         (b"p", 2**64 - 1, 2**64 - 1, False))
        self.assertEqual(rc.parse_line("é-x 1 1", 1)[0], "é-x".encode())

    def test_skipped(self):
        for line in ["", "\n", "   \t\r\n", "# comment", "  # indented comment 1 2"]:
            self.assertIsNone(rc.parse_line(line, 1), line)

    def test_errors(self):
        cases = [
            ("a 1", "line 7: expected 3 fields PATH TIMESTAMP VALUE, got 2"),
            ("a 1 2 3", "line 7: expected 3 fields PATH TIMESTAMP VALUE, got 4"),
            ("a/b 1 2", "line 7: expected PATH without '/'"),
            ("a" * 1025 + " 1 2", "line 7: expected PATH of 1..1024 bytes, got 1025 bytes"),
            (b"\xff\xfe 1 2", "line 7: expected PATH in valid UTF-8"),
            ("a -1 2", "line 7: expected TIMESTAMP as a decimal unsigned integer"),
            ("a +1 2", "line 7: expected TIMESTAMP"),
            ("a 1_0 2", "line 7: expected TIMESTAMP"),
            ("a 1.5 2", "line 7: expected TIMESTAMP"),
            ("a 18446744073709551616 2", "line 7: expected TIMESTAMP"),
            ("a 1 x", "line 7: expected VALUE as a decimal unsigned integer"),
            ("a 1 -2", "line 7: expected VALUE"),
            ("a 1 @", "line 7: expected VALUE"),
            ("a 1 @0", "line 7: expected VALUE"),
            ("a 1 @x", "line 7: expected VALUE"),
            ("a 1 18446744073709551616", "line 7: expected VALUE"),
            ("a 1 \u0661", "line 7: expected VALUE"),  # non-ASCII digit
            ("a\0 1 2", "line 7: expected text without NUL bytes"),
            ("a 1 " + "1" * 2045, "line 7: expected a line of at most 2048 bytes, got 2049 bytes"),
        ]
        for line, msg in cases:
            with self.subTest(line=line[:30]), self.assertRaises(ValueError) as cm:
                rc.parse_line(line, 7)
            self.assertTrue(str(cm.exception).startswith(msg), str(cm.exception))

    def test_parse_lines_numbers_lines(self):
        lines = rc._split_input(b"# header\n\na 1 2\nb 3 @4\r\nbad\n")
        with self.assertRaisesRegex(ValueError, r"^line 5: "):
            rc.parse_lines(lines)
        self.assertEqual(rc.parse_lines(lines[:4]),
                         [(b"a", 1, 2, False), (b"b", 3, 4, True)])

    def test_cli_bad_line_exits_2_without_connecting(self):
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "in.txt")
            with open(f, "w") as fh:
                fh.write("a-b 1 2\na-b 1 two\n")
            r = subprocess.run(
                [sys.executable, os.path.join(HERE, "ringdb_client.py"), "--host", "127.0.0.1",
                 "--port", "1", "--ca", "x", "--cert", "x", "--key", "x", f],
                capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertTrue(r.stderr.startswith("line 2: expected VALUE"), r.stderr)


# --- end to end over mutual TLS --------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """CA, server (SANs localhost, 127.0.0.1, ::1) and client 'agent' certificates."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=ringdb test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in [
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
                   "extendedKeyUsage=serverAuth\n"),
        ("agent", "extendedKeyUsage=clientAuth\n"),
    ]:
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext)
        _openssl("req", "-new", *ec, "-keyout", name + "-key.pem", "-out", name + ".csr",
                 "-subj", "/CN=" + ("localhost" if name == "server" else name), cwd=d)
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-out", name + ".pem", "-days", "2",
                 "-extfile", name + ".ext", cwd=d)


class CaptureServer:
    """Accepts mutual-TLS connections and records the bytes of each one.

    Like ringdb's socket listener it sends nothing after the handshake (no
    TLS 1.3 session tickets): a fire-and-forget client closes without reading,
    and anything unread would turn its close into a reset that can cut the
    burst short.
    """

    def __init__(self, d, tls12=False, family=socket.AF_INET, host="127.0.0.1"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(os.path.join(d, "server.pem"), os.path.join(d, "server-key.pem"))
        ctx.load_verify_locations(os.path.join(d, "ca.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.num_tickets = 0
        self.ctx = ctx
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.conns = []  # (peer common name, bytes, error or None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            data, err, cn, s = bytearray(), None, None, None
            try:
                raw.settimeout(30)
                s = self.ctx.wrap_socket(raw, server_side=True)
                cn = dict(x[0] for x in s.getpeercert()["subject"]).get("commonName")
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except (OSError, ssl.SSLError) as e:
                err = e
            finally:
                (s or raw).close()
            self.conns.append((cn, bytes(data), err))

    def wait(self, n=1, timeout=10.0):
        """Wait until n connections have been recorded."""
        for _ in range(int(timeout * 20)):
            if len(self.conns) >= n:
                return
            threading.Event().wait(0.05)

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(10)


@unittest.skipUnless(shutil.which("openssl"), "needs the openssl command")
class EndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.d = cls.tmp.name
        make_pki(cls.d)
        os.mkdir(os.path.join(cls.d, "other"))
        make_pki(os.path.join(cls.d, "other"))  # a CA the server does not trust
        lines = ["# test input", "", "interface_in-ae0.69 1349695853 1024"]
        lines += [f"traffic-client{i}-in {1700000000 + i} {i * 7}" for i in range(3000)]
        lines += ["traffic-client1-in 1700000000 @2"]
        cls.input = "\n".join(lines) + "\n"
        recs = rc.parse_lines(rc._split_input(cls.input.encode()))
        cls.expected = b"".join(rc.encode_frame(*r) for r in recs)
        cls.nframes = len(recs)
        assert cls.expected.startswith(VECTOR)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def pem(self, name):
        return os.path.join(self.d, name)

    def run_cli(self, argv0, port, host="127.0.0.1", extra=()):
        return subprocess.run(
            [*argv0, "--host", host, "--port", str(port), "--ca", self.pem("ca.pem"),
             "--cert", self.pem("agent.pem"), "--key", self.pem("agent-key.pem"), *extra],
            input=self.input, capture_output=True, text=True, timeout=60)

    def check_cli(self, argv0, tls12=False, host="127.0.0.1",
                  family=socket.AF_INET, extra=()):
        srv = CaptureServer(self.d, tls12=tls12, family=family, host=host)
        try:
            r = self.run_cli(argv0, srv.port, host=host, extra=extra)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr.strip(), f"sent {self.nframes} frames")
            srv.wait()
        finally:
            srv.close()
        self.assertEqual(len(srv.conns), 1)
        cn, data, err = srv.conns[0]
        self.assertEqual(cn, "agent")
        self.assertIsNone(err)
        self.assertEqual(data, self.expected)

    def test_python_cli(self):
        self.check_cli([sys.executable, os.path.join(HERE, "ringdb_client.py")])

    def test_python_cli_tls12_server_name(self):
        self.check_cli([sys.executable, os.path.join(HERE, "ringdb_client.py")],
                       tls12=True, extra=["--server-name", "localhost"])

    def test_python_module(self):
        srv = CaptureServer(self.d)
        try:
            with rc.Client("127.0.0.1", srv.port, self.pem("ca.pem"), self.pem("agent.pem"),
                           self.pem("agent-key.pem"), batch_bytes=1000) as c:
                c.send("interface_in-ae0.69", 1349695853, 1024)
                c.send("traffic-a", 5, 1, special=True)
                with self.assertRaises(ValueError):
                    c.send("bad/path", 1, 1)
            srv.wait()
        finally:
            srv.close()
        self.assertEqual(srv.conns[0][1],
                         VECTOR + rc.encode_frame("traffic-a", 5, 1, special=True))

    def test_python_module_unclosed_client_still_delivers(self):
        # The README's one-liner and a client kept in a global, neither
        # closed: the samples arrive when the object goes away or at exit.
        cases = [
            ("one-liner, collected at once",
             "rc.Client(*args).send('traffic-a', 5, 7)\n"),
            ("kept in a global, closed at exit",
             "c = rc.Client(*args)\nc.send('traffic-a', 5, 7)\n"),
            ("kept in a cycle, closed at exit",
             "c = rc.Client(*args)\nc.me = c\nc.send('traffic-a', 5, 7)\ndel c\n"),
        ]
        for name, body in cases:
            with self.subTest(name):
                srv = CaptureServer(self.d)
                try:
                    script = (f"import sys\nsys.path.insert(0, {HERE!r})\n"
                              "import ringdb_client as rc\n"
                              f"args = ('127.0.0.1', {srv.port}, {self.pem('ca.pem')!r}, "
                              f"{self.pem('agent.pem')!r}, {self.pem('agent-key.pem')!r})\n"
                              + body)
                    r = subprocess.run([sys.executable, "-c", script],
                                       capture_output=True, text=True, timeout=60)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertEqual(r.stderr, "")
                    srv.wait()
                finally:
                    srv.close()
                self.assertEqual(len(srv.conns), 1)
                self.assertEqual(srv.conns[0][1], rc.encode_frame("traffic-a", 5, 7))

    def test_python_wrong_server_name_fails(self):
        srv = CaptureServer(self.d)
        try:
            r = self.run_cli([sys.executable, os.path.join(HERE, "ringdb_client.py")],
                             srv.port, extra=["--server-name", "not-this-host"])
        finally:
            srv.close()
        self.assertEqual(r.returncode, 1)
        self.assertIn("TLS handshake with 127.0.0.1", r.stderr)
        self.assertIn("not-this-host", r.stderr)

    def check_rejected(self, argv0):
        # The server refuses the client certificate. Under TLS 1.2 the
        # handshake fails; under TLS 1.3 the client learns it from an alert
        # after its handshake, and must still exit 1 instead of "sent 1 frames".
        for tls12 in (False, True):
            with self.subTest(tls12=tls12):
                srv = CaptureServer(self.d, tls12=tls12)
                try:
                    r = subprocess.run(
                        [*argv0, "--host", "127.0.0.1", "--port", str(srv.port),
                         "--ca", self.pem("ca.pem"), "--cert", self.pem("other/agent.pem"),
                         "--key", self.pem("other/agent-key.pem")],
                        input="interface_in-ae0.69 1349695853 1024\n",
                        capture_output=True, text=True, timeout=60)
                    srv.wait()
                finally:
                    srv.close()
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("unknown ca", r.stderr.lower())
                self.assertEqual(srv.conns[0][1], b"")

    def test_python_rejected_client_cert_fails(self):
        self.check_rejected([sys.executable, os.path.join(HERE, "ringdb_client.py")])

    @unittest.skipUnless(os.access(C_CLIENT, os.X_OK), "C client not built")
    def test_c_rejected_client_cert_fails(self):
        self.check_rejected([C_CLIENT])

    @unittest.skipUnless(os.access(C_CLIENT, os.X_OK), "C client not built")
    def test_c_cli(self):
        self.check_cli([C_CLIENT])

    @unittest.skipUnless(os.access(C_CLIENT, os.X_OK), "C client not built")
    def test_c_cli_tls12_and_ipv6(self):
        self.check_cli([C_CLIENT], tls12=True, extra=["--server-name", "localhost"])
        if socket.has_ipv6:
            try:
                self.check_cli([C_CLIENT], host="::1", family=socket.AF_INET6)
            except OSError as e:  # no IPv6 loopback here
                self.skipTest(f"no ::1: {e}")

    @unittest.skipUnless(os.access(C_CLIENT, os.X_OK), "C client not built")
    def test_c_self_test_and_errors(self):
        r = subprocess.run([C_CLIENT, "--self-test"], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        srv = CaptureServer(self.d)
        try:
            r = self.run_cli([C_CLIENT], srv.port, extra=["--server-name", "not-this-host"])
        finally:
            srv.close()
        self.assertEqual(r.returncode, 1, r.stderr)


@unittest.skipUnless(os.access(C_CLIENT, os.X_OK), "C client not built")
class CParserParityTest(unittest.TestCase):
    """The C client reports bad input exactly like the Python client."""

    INPUTS = [
        b"a-b 1 2\na-b 1 two\n",
        b"# c\n\n  \t\na 1\n",
        b"a 1 2 3\n",
        b"a/b 1 2\n",
        b"a" * 1025 + b" 1 2\n",
        b"\xff\xfe 1 2\n",
        b"\xed\xa0\x80 1 2\n",
        b"a -1 2\n",
        b"a 18446744073709551616 2\n",
        b"a 1 @0\n",
        b"a 1 @\n",
        b"a 1 " + b"9" * 60 + b"\n",
        b"a\x001 1 2\n",
        b"a 1 " + b"1" * 2045 + b"\r\n",
        b"a 1 " + b"1" * 2045 + b"\n",
        b"ok-1 1 1\r\n" * 3 + b"a 1 " + b"1" * 100000 + b"\n",
        b"ok 1 1\nlast 1 x",  # no final newline
        b"a 1 it's\n",
        "a 1 \u00e9\u0661\x7f\n".encode(),
        b"a \xff\x01\x1f 1\n",
        b"a 1 @" + "\u00e9".encode() * 30 + b"\n",
    ]

    def test_same_errors(self):
        py = [sys.executable, os.path.join(HERE, "ringdb_client.py")]
        common = ["--host", "127.0.0.1", "--port", "9", "--ca", "x", "--cert", "x", "--key", "x"]
        for data in self.INPUTS:
            with self.subTest(data=data[:40]):
                rp = subprocess.run(py + common, input=data, capture_output=True, timeout=60)
                rc_ = subprocess.run([C_CLIENT] + common, input=data, capture_output=True,
                                     timeout=60)
                self.assertEqual(rp.returncode, 2, rp.stderr)
                self.assertEqual(rc_.returncode, 2, rc_.stderr)
                self.assertTrue(rp.stderr.startswith(b"line "), rp.stderr)
                self.assertEqual(rc_.stderr, rp.stderr)


if __name__ == "__main__":
    unittest.main()
