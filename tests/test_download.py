"""atomsift download against a local HTTP server on 127.0.0.1 (no other network)."""

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from atomsift.cli import main
from atomsift.data.download import DATASETS, fetch
from atomsift.errors import InputError

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves ``files`` (path -> bytes) with Range support; ``cut[path] = k`` sends only the first
    k bytes of the next full response (announcing the full length) and closes, like a dropped link."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges = True
        self.log: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                rng = self.headers.get("Range")
                if body is None:
                    server.log.append((self.path, rng, 404))
                    self.send_error(404, "Not Found")
                    return
                start, status = 0, 200
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        server.log.append((self.path, rng, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                server.log.append((self.path, rng, status))
                data = body[start:]
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                k = server.cut.pop(self.path, None)
                self.wfile.write(data if k is None else data[:k])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    s.files["/data.bin"] = PAYLOAD
    yield s
    s.close()


def test_fetch_verifies_and_renames(server, tmp_path):
    out = fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256=SHA, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "data.bin.part").exists()
    fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256=SHA)  # present and valid: nothing fetched
    assert len(server.log) == 1


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.cut["/data.bin"] = 120_000
    with pytest.raises(InputError, match="interrupted after 120000") as ei:
        fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256=SHA)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "data.bin").exists()  # never a truncated file under the final name
    assert (tmp_path / "data.bin.part").read_bytes() == PAYLOAD[:120_000]
    out = fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256=SHA)
    assert out.read_bytes() == PAYLOAD
    assert server.log[-1] == ("/data.bin", "bytes=120000-", 206)
    assert not (tmp_path / "data.bin.part").exists()


def test_server_without_range_support_restarts(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(b"junk" * 10)
    server.ranges = False
    out = fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256=SHA)
    assert out.read_bytes() == PAYLOAD and server.log[-1][2] == 200


def test_complete_part_file_is_finished_on_416(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    out = fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256=SHA)
    assert out.read_bytes() == PAYLOAD and server.log[-1][2] == 416


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    with pytest.raises(InputError, match="sha256 .* does not match the published 0+"):
        fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="md5"):
        fetch(server.url + "/data.bin", tmp_path / "data.bin", md5="0" * 32)
    with pytest.raises(InputError, match=f"size {len(PAYLOAD)} bytes, published 5"):
        fetch(server.url + "/data.bin", tmp_path / "data.bin", size=5)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_that_does_not_verify_is_an_error(server, tmp_path):
    (tmp_path / "data.bin").write_bytes(b"old")
    with pytest.raises(InputError, match="exists but does not match"):
        fetch(server.url + "/data.bin", tmp_path / "data.bin", sha256=SHA)
    assert (tmp_path / "data.bin").read_bytes() == b"old"


def test_cli_download_with_mirror_url(server, tmp_path, capsys):
    server.files["/mirror/matbench_phonons.json.gz"] = PAYLOAD
    url = server.url + "/mirror/matbench_phonons.json.gz"
    # the published (matminer) sha256 applies to a mirror: the fixture bytes are rejected
    rc = main(["download", "matbench", "--subset", "phonons", "--dest", str(tmp_path / "d"), "--url", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not match the published " + DATASETS["matbench"].files["phonons"][0].sha256 in err[0]
    assert not (tmp_path / "d" / "matbench_phonons.json.gz").exists() and not list((tmp_path / "d").iterdir())
    rc = main(["download", "matbench", "--subset", "phonons", "--dest", str(tmp_path / "d"), "--url", url, "--sha256", SHA])
    assert rc == 0 and (tmp_path / "d" / "matbench_phonons.json.gz").read_bytes() == PAYLOAD
    assert "atomsift prepare matbench" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["download", "md22", "--dest", "D", "--url", "URL/x"], "--url replaces one file, but 7 are selected"),
    (["download", "matbench", "--subset", "steels", "--dest", "D"], "matbench has no subset 'steels'"),
    (["download", "nope", "--dest", "D"], "unknown dataset 'nope'"),
    (["download", "qmof", "--dest", "D", "--url", "URL/missing.zip"], "URL/missing.zip: HTTP 404 Not Found"),
])
def test_cli_errors_are_one_line(server, tmp_path, capsys, argv, needle):
    argv = [a.replace("URL", server.url).replace("D", str(tmp_path / "d")) if a in ("D",) or a.startswith("URL") else a
            for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle.replace("URL", server.url) in err[0], err
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())


def test_unreachable_host_is_one_line(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(InputError, match="cannot download") as ei:
        fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", timeout=5)
    assert "\n" not in str(ei.value)


def test_release_table_is_complete():
    assert set(DATASETS) >= {"ani1x", "transition1x", "oc20", "oc22", "rmd17", "md22", "spice", "qm9", "qmof", "matbench"}
    for name, rel in DATASETS.items():
        assert set(rel.default) <= set(rel.files), name
        for files in rel.files.values():
            for f in files:
                assert f.url.startswith(("https://", "http://")) and "/" not in f.filename
                assert f.sha256 is None or len(f.sha256) == 64
                assert f.md5 is None or len(f.md5) == 32
    assert len(DATASETS["md22"].files) == 7 and len(DATASETS["matbench"].files) == 9
    # the public model checkpoints (JMP's README, fairchem's model table); none publishes a checksum
    models = {k: r.kind for k, r in DATASETS.items() if r.kind != "dataset"}
    assert models == {"jmp-s": "jmp", "jmp-l": "jmp", "eqv2-31m": "eqv2"}
    assert DATASETS["eqv2-31m"].files["checkpoint"][0].url.endswith("/2023_06/oc20/s2ef/eq2_31M_ec4_allmd.pt")


def _torch_bytes(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_cli_downloads_a_model_checkpoint(server, tmp_path, capsys):
    """No checksum is published for the model checkpoints: a whole torch checkpoint is kept, a
    cut one (the server closing early, no Content-Length) is not."""
    import torch

    ck = _torch_bytes({"state_dict": {"backbone.w": torch.arange(50_000, dtype=torch.float32)}, "epoch": 3})
    server.files["/jmp-s.pt"] = ck
    rc = main(["download", "jmp-s", "--dest", str(tmp_path / "ck"), "--url", server.url + "/jmp-s.pt"])
    assert rc == 0 and (tmp_path / "ck" / "jmp-s.pt").read_bytes() == ck
    assert "atomsift moments --extractor DEST/jmp-s.pt" in capsys.readouterr().out
    server.files["/jmp-l.pt"] = ck[: len(ck) // 2]
    rc = main(["download", "jmp-l", "--dest", str(tmp_path / "cut"), "--url", server.url + "/jmp-l.pt"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a complete torch checkpoint file" in err and not (tmp_path / "cut" / "jmp-l.pt").exists()
