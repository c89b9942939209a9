"""Disk hygiene (issue 20 item 6): the files a session leaves on a server (result pictures, download archives, the
uploads it sent or used) go when the session ends or ages out; uploads need a session; the server's temporary
folders come back to their size once the sessions end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def test_a_session_ending_removes_its_folder_and_the_uploads_only_it_held(tmp_path):
    from core.explorer.sessions import Registry

    registry = Registry(tmp_path / "sessions")
    uploads = tmp_path / "gradio"
    paths = {}
    for name in ("mine", "shared", "theirs"):
        (uploads / name).mkdir(parents=True)
        paths[name] = uploads / name / f"{name}.png"
        paths[name].write_bytes(b"png" * 10)
    registry.opened("s1", "client-a")
    registry.opened("s2", "client-b")
    registry.uploaded("client-a", [str(paths["mine"])], size=30)
    registry.uploaded("client-b", [str(paths["theirs"])], size=30)
    registry.uploaded("client-a", [str(paths["shared"])], size=30)
    registry.claim("s2", [str(paths["shared"]), "/etc/passwd"])  # a path it did not record is ignored
    (registry.folder("s1") / "picture.png").write_bytes(b"result")
    assert registry.upload_bytes() == 90 and registry.upload_bytes("client-a") == 60
    registry.end("s1")
    assert not paths["mine"].exists() and not (uploads / "mine").exists()  # its upload and Gradio's folder
    assert paths["shared"].exists() and paths["theirs"].exists()  # s2 still holds them
    assert not (tmp_path / "sessions" / "s1").exists()
    assert Path("/etc/passwd").exists()
    registry.end("s2")
    assert not paths["shared"].exists() and not paths["theirs"].exists()
    assert registry.upload_bytes() == 0


def test_sweep_removes_unheld_uploads_and_idle_folders_by_age(tmp_path):
    from core.explorer import sessions

    registry = sessions.Registry(tmp_path / "sessions")
    stray = tmp_path / "gradio" / "x" / "stray.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"sent straight to the upload route")
    registry.uploaded("client-z", [str(stray)], size=10)  # no session open: held by nobody
    (registry.folder("gone") / "a.png").write_bytes(b"1")
    (registry.folder("alive") / "b.png").write_bytes(b"2")
    registry.opened("alive", "client-y")
    now = time.time()
    assert registry.sweep(now) == [] and stray.exists()  # young
    later = now + max(sessions.UNCLAIMED_UPLOAD_SECONDS, sessions.SESSION_IDLE_SECONDS) + 1
    removed = registry.sweep(later)
    assert str(stray) in removed and not stray.exists()
    assert not (tmp_path / "sessions" / "gone").exists() and (tmp_path / "sessions" / "alive").exists()


def test_session_folder_names_cannot_leave_the_root(tmp_path):
    from core.explorer.sessions import SHARED, Registry

    registry = Registry(tmp_path / "sessions")
    for bad in ("../../etc", "/tmp", "a/b", "", None, "x" * 200):
        assert registry.folder(bad) == tmp_path / "sessions" / SHARED
    registry.end("../../etc")
    assert Path("/etc").exists()


# ---------------------------------------------------------------- a real server

@pytest.mark.slow
def test_uploads_need_a_session_and_the_servers_folders_come_back_once_sessions_end(tmp_path):
    """After 12 uploads of ~6 MB (72 MB, each used by a request), a download archive and the result pictures, the
    server's temporary folder is back within 50 MB of its start once the sessions end; an upload sent with no
    session open is refused and leaves nothing."""
    import httpx
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    from tests.hardening.server import folder_bytes, public_server

    pictures = []
    for index in range(12):
        path = tmp_path / "mine" / f"upload-{index}.png"
        path.parent.mkdir(exist_ok=True)
        noise = np.random.default_rng(index).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        pictures.append(path)
    assert sum(p.stat().st_size for p in pictures) > 70e6
    with public_server(tmp_path / "tmp", tmp_path / "cache") as server:
        before = folder_bytes(server.tmp)  # no session has opened yet
        refused = httpx.post(server.url + "gradio_api/upload", files={"files": ("x.png", pictures[0].read_bytes())},
                             timeout=60)
        assert refused.status_code == 403 and "belong to a session" in refused.text
        assert folder_bytes(server.tmp) - before < 1e6

        warm = Client(server.url, verbose=False)
        warm.predict(api_name="/decompose", spec="toy", image=None, image_id="example:0", texts="a red circle",
                     convention="paper")
        warm.close()
        start = folder_bytes(server.tmp)

        clients = [Client(server.url, verbose=False) for _ in range(3)]
        for index, picture in enumerate(pictures):
            clients[index % 3].predict(api_name="/decompose", spec="toy", image=handle_file(str(picture)),
                                       image_id="", texts="a red circle\na blue square", convention="paper")
        clients[0].predict("toy-biased", "square", "triangle", "", None, 5, 0.9, "world", 4, 1, False, 0, "", "",
                           "", "", api_name="/generate")
        clients[0].predict(api_name="/download")
        held = list(server.tmp.rglob("upload-*.png"))
        assert len(held) == 12
        archives = list(server.tmp.glob("clipscope-sessions-*/*/download-*/*.zip"))  # core.explorer.downloads.write_archive
        assert len(archives) == 1
        during = folder_bytes(server.tmp)
        assert during - start > 70e6
        for client in clients:
            client.close()
        deadline = time.time() + 120  # a closed client's heartbeat is noticed within ~15 s
        while time.time() < deadline and (folder_bytes(server.tmp) - start > 50e6 or any(p.exists() for p in held)):
            time.sleep(2)
        after = folder_bytes(server.tmp)
        assert after - start <= 50e6, (start, during, after)
        assert not any(p.exists() for p in held) and not any(p.exists() for p in archives)
        assert "Traceback" not in server.log_text()
