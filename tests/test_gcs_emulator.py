"""The local GCS the gs:// tests run against: etils.epath (gcsfs) and Orbax (tensorstore) both reach it."""

import numpy as np
from etils import epath


def test_epath_and_orbax_reach_the_emulator(gcs, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    monkeypatch.chdir(tmp_path)
    run = epath.Path(f"gs://{gcs.bucket}/run")
    (run / "a.txt").write_text("hello")
    assert (run / "a.txt").read_text() == "hello"
    with ocp.CheckpointManager(run / "ckpt") as manager:
        manager.save(3, args=ocp.args.StandardSave({"w": np.arange(4.0)}))
        manager.wait_until_finished()
        restored = manager.restore(3, args=ocp.args.StandardRestore({"w": np.zeros(4)}))
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))
    assert sorted(p.name for p in run.iterdir()) == ["a.txt", "ckpt"]
    assert not (tmp_path / "gs:").exists()  # nothing went to a local folder named after the URL
