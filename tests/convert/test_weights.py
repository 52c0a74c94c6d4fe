"""`torch_load`, the one door to PyTorch pickles: torch>=2.6 (CVE-2025-32434) checked before anything is
read, tensors only (a pickled object is refused); `read_tensors` returns what was saved."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from clapcomp.convert import weights  # noqa: E402


def test_old_torch_is_refused_before_the_file_is_opened(tmp_path, monkeypatch):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.arange(3.0)}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    with pytest.raises(ImportError, match=r"needs torch>=2.6, found 2.5.1\+cpu.*CVE-2025-32434"):
        weights.read_tensors(tmp_path)
    assert opened == []


def test_tensors_round_trip_and_pickled_objects_are_refused(tmp_path):
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "i": torch.tensor([1, 2])}, tmp_path / "pytorch_model.bin")
    got = weights.read_tensors(tmp_path)
    np.testing.assert_array_equal(got["w"], np.arange(6.0, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(got["i"], [1, 2])
    torch.save({"w": torch.zeros(1), "obj": weights.Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read .*evil.pt with torch.load\\(weights_only=True\\)"):
        weights.torch_load(tmp_path / "evil.pt")
