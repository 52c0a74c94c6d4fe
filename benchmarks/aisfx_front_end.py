"""clapcomp's aisfx front end + CNN vs aisfx's own spectrogram code + EmbeddingNet, on a few clips.

aisfx computes its spectrograms with Essentia (what the released model was trained on) or librosa
0.9.2 (its "convenience" path), neither of which belongs in clapcomp's environment, so this runs in
two steps, two Pythons:

  # 1. aisfx's spectrograms, in a throwaway venv with its own dependencies
  python3 -m venv /tmp/aisfx-ref && /tmp/aisfx-ref/bin/pip install librosa==0.9.2 essentia soundfile  # measured: essentia 2.1b6.dev1389, numpy 2.4.6
  /tmp/aisfx-ref/bin/pip install --no-deps aisfx==0.1.2
  /tmp/aisfx-ref/bin/python benchmarks/aisfx_front_end.py reference --dir /tmp/aisfx-ref-out
  # 2. the comparison, in clapcomp's venv (aisfx installed with --no-deps, torch for its EmbeddingNet)
  python benchmarks/aisfx_front_end.py compare --dir /tmp/aisfx-ref-out

Prints, per clip and front end, the largest feature and embedding differences and the cosine of the
embeddings. aisfx's librosa path returns [mels, frames] and blocks the wrong axis; it is transposed
here, as its Essentia path returns [frames, mels]. Essentia's loader clips samples to [-1, 1].
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

SR, N = 44_100, 101_376  # one aisfx block: 100 frames of hop 1024
SPEC = dict(sr=44100.0, block_size=2048, hop_size=1024, n_mels=96, f_min=0.0, f_max=22050.0)
RANGE = 9.457798957824707  # aisfx's spectrogram_normalize('original')


def _aisfx_file(relative: str):
    """A module of the installed aisfx package, loaded by path (its __init__ imports torch and tqdm)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None:
        raise SystemExit("aisfx is not installed: pip install --no-deps aisfx==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / relative
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def clips() -> dict[str, np.ndarray]:
    t = np.arange(N) / SR
    rng = np.random.default_rng(0)
    return {
        "noise_burst": np.clip(0.3 * rng.standard_normal(N) * np.exp(-3 * t), -1, 1),
        "chirp": 0.5 * np.sin(2 * np.pi * (200 * t + 2000 * t**2)),
        "tones": 0.2 * np.sin(2 * np.pi * 440 * t) * (t < 1.0) + 0.6 * np.sin(2 * np.pi * 1320 * t) * (t > 1.2),
        "clicks": np.clip(np.where(np.arange(N) % 8000 < 40, 0.9, 0.0) * rng.standard_normal(N), -1, 1),
    }


def reference(out: Path) -> None:
    import soundfile as sf

    librosa_path = _aisfx_file("spectrogram/spectrogram_librosa.py")
    essentia_path = _aisfx_file("spectrogram/spectrogram_essentia.py")
    out.mkdir(parents=True, exist_ok=True)
    for name, y in clips().items():
        wav = out / f"{name}.wav"
        sf.write(wav, y.astype(np.float32), SR, subtype="FLOAT")
        np.save(out / f"{name}.librosa.npy", librosa_path.compute_spectrogram(filename=str(wav), **SPEC).T)
        np.save(out / f"{name}.essentia.npy", np.asarray(essentia_path.compute_spectrogram(filename=str(wav), **SPEC)))
        print("wrote", name)


def compare(out: Path) -> None:
    import dataclasses

    import jax.numpy as jnp
    import soundfile as sf
    import torch

    from clapcomp import audio
    from clapcomp.audio import AISFX_AUDIO
    from clapcomp.convert.panns import _aisfx_safe_globals, aisfx_checkpoint_path, load_aisfx_tower

    front, _, tower = load_aisfx_tower()
    cnn2d = _aisfx_file("models/cnn2d.py")
    with torch.serialization.safe_globals(_aisfx_safe_globals()):
        weights, datasets = torch.load(aisfx_checkpoint_path(), map_location="cpu", weights_only=True)
    net = cnn2d.CrossNet(cnn2d.EmbeddingNet("max", 3, 1, 64), datasets, "cpu")
    net.load_state_dict(weights)
    net.eval()
    fronts = {
        "essentia": front,
        "librosa": dataclasses.replace(AISFX_AUDIO, peak_normalize=True, window="periodic", mel_weighting="hz"),
    }
    print(
        f"{'clip':12s} {'aisfx path':10s} {'max|feature d|':>15s} {'max|emb d|':>11s} {'max|emb|':>9s} {'cosine':>10s}"
    )
    for name in clips():
        y, sr = sf.read(out / f"{name}.wav", dtype="float32")
        for kind, cfg in fronts.items():
            wave, lengths = audio.prepare_waveforms([y], sr, cfg)
            mel = audio.features(jnp.asarray(wave), jnp.asarray(lengths), cfg)[0]
            ours, ours_emb = np.asarray(mel[0, 0]), np.asarray(tower(mel))[0]
            ref = np.load(out / f"{name}.{kind}.npy") / RANGE
            with torch.no_grad():
                emb = net.get_embedding(torch.tensor(ref[None], dtype=torch.float32)).numpy()[0]
            cos = float(emb @ ours_emb / np.linalg.norm(emb) / np.linalg.norm(ours_emb))
            print(f"{name:12s} {kind:10s} {np.abs(ours - ref).max():15.2e} {np.abs(emb - ours_emb).max():11.2e} "
                  f"{np.abs(emb).max():9.2f} {cos:10.7f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["reference", "compare"])
    parser.add_argument("--dir", type=Path, required=True, help="where the clips and aisfx's spectrograms go")
    args = parser.parse_args()
    (reference if args.step == "reference" else compare)(args.dir)


if __name__ == "__main__":
    main()
