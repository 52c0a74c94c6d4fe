"""clapcomp.fs: atomic files and folders (an interrupted write leaves the previous bytes), the one-writer
lock (a second writer is refused naming the first; a dead holder's lock is taken over only when provably
dead), sha256 manifests (every changed byte, size or missing file is named). References: the bytes
written before, hashlib, a real second process killed with SIGKILL."""

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from child_env import child_env  # tests/child_env.py (pytest pythonpath = tests)

from clapcomp import fs


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_file_replaces_on_success_and_keeps_the_old_bytes_on_failure(tmp_path):
    path = tmp_path / "a.json"
    fs.write_text(path, "old")
    with pytest.raises(KeyboardInterrupt), fs.atomic_file(path) as f:
        f.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and listing(tmp_path) == ["a.json"]
    fs.write_json(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1} and listing(tmp_path) == ["a.json"]
    with fs.atomic_path(tmp_path / "sub" / "b.bin") as tmp:  # for writers that take a file name
        assert tmp.parent == tmp_path / "sub" and not (tmp_path / "sub" / "b.bin").exists()
        tmp.write_bytes(b"xyz")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"xyz" and listing(tmp_path / "sub") == ["b.bin"]
    with pytest.raises(ValueError, match="mode must be"):
        with fs.atomic_file(path, "a"):
            pass


def test_atomic_dir_new_empty_refused_replaced_and_interrupted(tmp_path):
    out = tmp_path / "out"
    with fs.atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out and not out.exists()
        assert (tmp_path / ".out.lock").is_file()  # the sibling lock, held while writing
        (tmp / "x").write_text("1")
    assert listing(out) == ["x"] and listing(tmp_path) == ["out"]
    with pytest.raises(FileExistsError, match="is not empty and holds files this command did not write"):
        with fs.atomic_dir(out):
            pass
    with pytest.raises(KeyboardInterrupt), fs.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "y").write_text("2")
        raise KeyboardInterrupt
    assert listing(out) == ["x"] and (out / "x").read_text() == "1" and listing(tmp_path) == ["out"]
    with fs.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "y").write_text("2")
    assert listing(out) == ["y"] and listing(tmp_path) == ["out"]
    (tmp_path / "empty").mkdir()
    with fs.atomic_dir(tmp_path / "empty") as tmp:  # an empty folder is taken without overwrite
        (tmp / "z").write_text("3")
    assert listing(tmp_path / "empty") == ["z"]


def test_replaceable_only_an_earlier_output_of_the_same_command(tmp_path):
    assert fs.replaceable(tmp_path / "absent", ["a"], "a") and fs.replaceable(tmp_path, ["a"], "a")
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "x.png").write_bytes(b"")
    assert fs.replaceable(tmp_path, ["results.json", "*.png"], "results.json")
    assert not fs.replaceable(tmp_path, ["results.json"], "results.json")  # x.png is not one of ours
    (tmp_path / "results.json").unlink()
    assert not fs.replaceable(tmp_path, ["results.json", "*.png"], "results.json")  # no marker


def test_refuse_inputs_sees_through_dots_and_symlinks(tmp_path):
    (tmp_path / "m.jsonl").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "m.jsonl")
    for out in (tmp_path / "m.jsonl", tmp_path / "d" / ".." / "m.jsonl", tmp_path / "link"):
        with pytest.raises(ValueError, match="would overwrite the input"):
            fs.refuse_inputs(out, [None, tmp_path / "m.jsonl"])
    fs.refuse_inputs(tmp_path / "other.jsonl", [tmp_path / "m.jsonl"])


HOLDER = textwrap.dedent(
    """
    import sys, time
    from clapcomp import fs
    lock = fs.lock_folder(sys.argv[1], purpose="holder test", run_id="run-abc")
    print("locked", flush=True)
    time.sleep(600)
    """
)


def test_second_writer_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, env=child_env(), text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(fs.LockHeld) as info:
            fs.lock_folder(tmp_path)
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} (run run-abc, holder test" in message
        assert "one writer per folder" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="clapcomp.fs"):
        lock = fs.lock_folder(tmp_path, run_id="run-new")  # the holder died: its lock is stale
    assert f"pid {holder.pid}" in caplog.text and "no longer running; taking it over" in caplog.text
    assert json.loads((tmp_path / fs.LOCK_NAME).read_text())["run_id"] == "run-new"
    lock.release()
    assert listing(tmp_path) == []


def test_locks_of_other_hosts_and_reused_pids(tmp_path):
    path = tmp_path / fs.LOCK_NAME
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "run_id": "r", "since": "t"}))
    with pytest.raises(fs.LockHeld, match=f"host elsewhere .* delete {path} and rerun"):
        fs.lock_folder(tmp_path)  # cannot tell whether it runs: refused, with what to do
    # This host, a live pid that started at another time than the holder's: the pid was reused.
    path.write_text(json.dumps({"pid": os.getppid(), "pid_start": "-1", "host": socket.gethostname(), "run_id": "r"}))
    with fs.lock_folder(tmp_path, run_id="mine"):
        assert json.loads(path.read_text())["run_id"] == "mine"
        with pytest.raises(fs.LockHeld, match=f"pid {os.getpid()} on host"):  # a second writer in one process too
            fs.lock_folder(tmp_path)
    assert not path.exists()


def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
    lock = fs.lock_folder(tmp_path, run_id="first")
    (tmp_path / fs.LOCK_NAME).write_text(json.dumps({"run_id": "someone else"}))
    lock.release()
    assert json.loads((tmp_path / fs.LOCK_NAME).read_text())["run_id"] == "someone else"


def test_manifest_names_every_changed_byte_size_and_missing_file(tmp_path):
    (tmp_path / "a").mkdir()
    files = {"a/x.bin": bytes(range(256)) * 40, "y.txt": b"hello", "skip.me": b"1"}
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    assert not fs.verify_manifest(tmp_path)  # none yet
    manifest = fs.write_manifest(tmp_path, exclude=("skip.me",))
    assert manifest["sha256"] == {r: hashlib.sha256(d).hexdigest() for r, d in files.items() if r != "skip.me"}
    assert manifest["bytes"] == {"a/x.bin": 10240, "y.txt": 5}
    (tmp_path / "skip.me").write_bytes(b"changed")  # not listed: not checked
    assert fs.verify_manifest(tmp_path)
    for offset in (0, 5000, 10239):
        data = bytearray(files["a/x.bin"])
        data[offset] ^= 0x80
        (tmp_path / "a/x.bin").write_bytes(bytes(data))
        with pytest.raises(fs.CorruptFile, match=r"a/x.bin: sha256 .* the bytes changed") as info:
            fs.verify_manifest(tmp_path)
        assert info.value.path == tmp_path / "a" / "x.bin"
    (tmp_path / "a/x.bin").write_bytes(files["a/x.bin"][:-1])
    with pytest.raises(fs.CorruptFile, match="10239 bytes, sha256.json says 10240"):
        fs.verify_manifest(tmp_path)
    (tmp_path / "a/x.bin").unlink()
    with pytest.raises(fs.CorruptFile, match="listed in sha256.json but missing"):
        fs.verify_manifest(tmp_path)
    (tmp_path / fs.MANIFEST).write_text("{not json")
    with pytest.raises(fs.CorruptFile, match="unreadable manifest"):
        fs.verify_manifest(tmp_path)


# ----------------------------------------------------------------------------- gs:// (the local GCS emulator)


def test_gs_atomic_writes_folders_and_logs_leave_no_local_gs_folder(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = f"gs://{gcs.bucket}/run"
    assert type(fs.as_path(run)).__module__.startswith("etils.epath") and str(fs.as_path(run)) == run
    fs.write_text(f"{run}/a.json", "old")
    with pytest.raises(KeyboardInterrupt), fs.atomic_file(f"{run}/a.json") as f:
        f.write("half of the new")
        raise KeyboardInterrupt
    assert fs.as_path(f"{run}/a.json").read_text() == "old"
    with fs.atomic_path(f"{run}/sub/b.bin") as tmp:  # a local file, uploaded as one object at the end
        assert not fs.as_path(f"{run}/sub/b.bin").exists()
        tmp.write_bytes(b"xyz")
    assert fs.as_path(f"{run}/sub/b.bin").read_bytes() == b"xyz"

    out = f"{run}/out"
    with fs.atomic_dir(out) as tmp:
        assert fs.as_path(f"{run}/.out.lock").is_file()  # the sibling lock object, held while writing
        (tmp / "x").write_text("1")
        (tmp / "d").mkdir()
        (tmp / "d" / "y").write_text("2")
        assert not fs.as_path(out).exists()  # nothing uploaded before a clean exit
    assert gcs_files(out) == {"x": b"1", "d/y": b"2"} and not fs.as_path(f"{run}/.out.lock").exists()
    with pytest.raises(FileExistsError, match="is not empty and holds files this command did not write"):
        with fs.atomic_dir(out):
            pass
    with pytest.raises(KeyboardInterrupt), fs.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "z").write_text("3")
        raise KeyboardInterrupt
    assert gcs_files(out) == {"x": b"1", "d/y": b"2"}
    with fs.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "z").write_text("3")
    assert gcs_files(out) == {"z": b"3"}  # the replaced folder's other objects are deleted

    for line in ("a\n", "b\n"):  # each AppendFile reads what is there: a resumed log keeps its lines
        with fs.AppendFile(f"{run}/log.jsonl") as f:
            f.write(line)
            assert fs.as_path(f"{run}/log.jsonl").read_text().endswith(line)  # uploaded at each write
    assert fs.as_path(f"{run}/log.jsonl").read_text() == "a\nb\n"
    fs.move(f"{run}/out", f"{run}/aside/out")
    assert gcs_files(f"{run}/aside") == {"out/z": b"3"} and not fs.as_path(out).exists()
    with fs.local_copy(f"{run}/aside") as local:
        assert (local / "out" / "z").read_text() == "3" and not str(local).startswith("gs:")
    with pytest.raises(ValueError, match="would overwrite the input"):
        fs.refuse_inputs(f"{run}/aside/", [f"{run}/aside"])
    assert not (tmp_path / "gs:").exists()


def gcs_files(prefix) -> dict:
    """{relative name: bytes} of every object below `prefix`, listed independently with google-cloud-storage."""
    from google.cloud import storage

    bucket, _, name = prefix[len("gs://") :].partition("/")
    blobs = storage.Client().bucket(bucket).list_blobs(prefix=name + "/")
    return {b.name[len(name) + 1 :]: b.download_as_bytes() for b in blobs}


def test_gs_second_writer_is_refused_and_a_killed_holder_is_taken_over(gcs, caplog):
    run = f"gs://{gcs.bucket}/run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run], stdout=subprocess.PIPE, env={**child_env(), **gcs.env}, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for _ in range(2):  # refused by GCS's ifGenerationMatch=0 precondition, holder named, lock untouched
            with pytest.raises(fs.LockHeld) as info:
                fs.lock_folder(run)
            assert f"pid {holder.pid} on host {socket.gethostname()} (run run-abc, holder test" in str(info.value)
            assert json.loads(gcs_files(run)[fs.LOCK_NAME])["run_id"] == "run-abc"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="clapcomp.fs"):
        lock = fs.lock_folder(run, run_id="run-new")  # the holder died: its lock is stale
    assert f"pid {holder.pid}" in caplog.text and "no longer running; taking it over" in caplog.text
    assert json.loads(gcs_files(run)[fs.LOCK_NAME])["run_id"] == "run-new"
    fs.write_text(f"{run}/{fs.LOCK_NAME}", json.dumps({"run_id": "someone else", "host": "elsewhere"}))
    lock.release()  # not its own any more: left
    assert json.loads(gcs_files(run)[fs.LOCK_NAME])["run_id"] == "someone else"
    with pytest.raises(fs.LockHeld, match=f"host elsewhere .* delete {run}/{fs.LOCK_NAME} and rerun"):
        fs.lock_folder(run)
    fs.as_path(f"{run}/{fs.LOCK_NAME}").unlink()
    with fs.lock_folder(run, run_id="mine"):
        assert json.loads(gcs_files(run)[fs.LOCK_NAME])["run_id"] == "mine"
    assert gcs_files(run) == {}


def test_gs_manifest_names_changed_bytes_sizes_and_missing_objects(gcs):
    root = f"gs://{gcs.bucket}/m"
    files = {"a/x.bin": bytes(range(256)) * 40, "y.txt": b"hello", "skip.me": b"1"}
    for rel, data in files.items():
        fs.write_bytes(f"{root}/{rel}", data)
    assert not fs.verify_manifest(root)
    manifest = fs.write_manifest(root, exclude=("skip.me",))
    assert manifest["sha256"] == {r: hashlib.sha256(d).hexdigest() for r, d in files.items() if r != "skip.me"}
    assert manifest["bytes"] == {"a/x.bin": 10240, "y.txt": 5}
    assert json.loads(gcs_files(root)[fs.MANIFEST]) == manifest and fs.verify_manifest(root)
    data = bytearray(files["a/x.bin"])
    data[5000] ^= 0x80
    fs.write_bytes(f"{root}/a/x.bin", bytes(data))
    with pytest.raises(fs.CorruptFile, match=r"a/x.bin: sha256 .* the bytes changed"):
        fs.verify_manifest(root)
    fs.write_bytes(f"{root}/a/x.bin", files["a/x.bin"][:-1])
    with pytest.raises(fs.CorruptFile, match="10239 bytes, sha256.json says 10240"):
        fs.verify_manifest(root)
    fs.as_path(f"{root}/a/x.bin").unlink()
    with pytest.raises(fs.CorruptFile, match="listed in sha256.json but missing"):
        fs.verify_manifest(root)
