"""A local Google Cloud Storage for the gs:// tests: `gcp-storage-emulator` (PyPI) on 127.0.0.1, in
memory, with one bucket. The environment it returns points every GCS client of this process and of its
children at it: gcsfs / google-cloud-storage (STORAGE_EMULATOR_HOST), tensorstore, which Orbax uses for
array data (TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING), and no real credentials.

Two things GCS does and the emulator does not, which clapcomp relies on, are added when this module runs
as a script (how `running` starts it), as GCS documents them: generation preconditions (an upload or
delete with `ifGenerationMatch=G` is refused with 412 unless the object's generation is G, 0: absent;
clapcomp's folder lock) and the `x-goog-generation` header of a download (tensorstore's OCDBT, which
Orbax writes checkpoints with, reads its manifest's generation from it).

    def test_x(gcs):            # the fixture (tests/conftest.py): a fresh emulator per test
        run = f"gs://{gcs.bucket}/run"
        subprocess.run([...], env={**child_env(), **gcs.env})
"""

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time

BUCKET = "bkt"


@dataclasses.dataclass(frozen=True)
class Emulator:
    url: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict  # the variables that point GCS clients here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(bucket: str = BUCKET, timeout_s: float = 30.0):
    """Start the emulator, set its variables in os.environ for the duration, stop it and restore them."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            bucket,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GOOGLE_CLOUD_PROJECT": "emulator",
    }
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gcp-storage-emulator did not start on port {port}") from None
                time.sleep(0.1)
        os.environ.update(env)
        yield Emulator(url=url, bucket=bucket, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _as_gcs() -> None:
    """Wraps the emulator's object upload and delete handlers with GCS's ifGenerationMatch check, and its
    download handler with the generation headers."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def guarded(handler, name_of):
        def handle(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            if wanted and "upload_id" not in request.query:
                try:
                    current = storage.get_file_obj(request.params["bucket_name"], name_of(request))["generation"]
                except NotFound:
                    current = "0"
                if str(current) != wanted[0]:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "conditionNotMet", "errors": []}})
                    return None
            return handler(request, response, storage, *args, **kwargs)

        return handle

    def upload_name(request):
        if "name" in request.query:
            return request.query["name"][0]
        return (request.data.get("meta") or request.data or {}).get("name") if isinstance(request.data, dict) else None

    def with_generation(download):
        def handle(request, response, storage, *args, **kwargs):
            with contextlib.suppress(NotFound):
                obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
                response["x-goog-generation"] = str(obj["generation"])
                response["x-goog-metageneration"] = str(obj["metageneration"])
            return download(request, response, storage, *args, **kwargs)

        return handle

    objects.insert = guarded(objects.insert, upload_name)
    objects.delete = guarded(objects.delete, lambda request: request.params["object_id"])
    objects.download = with_generation(objects.download)


if __name__ == "__main__":
    _as_gcs()
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
