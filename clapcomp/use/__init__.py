"""What a user does with a trained model: `classify` (zero-shot or probe labels), `search` (an incremental
FAISS index over a sound library, and its local page in `serve`), `probe` (a linear classifier on frozen
embeddings). Everything here goes through `clapcomp.inference`; nothing imports train/ or the data pipeline."""
