"""Error feedback on MiniLM-L6 with covariances from more calibration text: does the output error generalise better?

    python benchmarks/probe_calibration_text.py [--qps -30 -28]

32 calibration sentences hold a few hundred tokens, fewer than the 1,536 inputs of the
feed-forward output layers, so their input covariances are rank-deficient. This codes
MiniLM-L6 at single global qps (rdoq λ 0.1) without feedback and with feedback from three
calibration sets (minilm_eval.CALIBRATION_SENTENCES, 512 standard-library docstring
sentences, both) and scores each stream on the scored and the held-out sentences
(embedding fidelity, loss in points). Writes probe_calibration_text.md in --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import minilm_eval as me  # noqa: E402

import nnc  # noqa: E402
from nnc.encoder import Encoder  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qps", type=int, nargs="+", default=[-30, -28])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    model_dir, tensors = me.load_float_tensors()
    scored = me.MiniLMFidelity(model_dir, reference=tensors)
    held_out = me.MiniLMFidelity(model_dir, reference=tensors, sentences=me.HELD_OUT_SENTENCES)
    docstrings = me.stdlib_docstring_sentences(512)
    sets = {"32 calibration": me.CALIBRATION_SENTENCES, "512 docstring": docstrings,
            "32 calibration + 512 docstring": me.CALIBRATION_SENTENCES + docstrings}
    covariances = {name: me.MiniLMFidelity(model_dir, reference=tensors, sentences=s).input_covariances(tensors)
                   for name, s in sets.items()}
    lines = ["# MiniLM-L6: error feedback with covariances from more calibration text", "",
             f"Command: `python benchmarks/probe_calibration_text.py --qps {' '.join(map(str, args.qps))}`", "",
             "Global qp, rdoq λ 0.1; loss = 100 × (1 − mean cosine similarity to the original embeddings) on the "
             "32 scored and the 32 held-out sentences.", "",
             "| qp | covariances from | bytes | loss | held-out loss |", "|---:|---|---:|---:|---:|"]
    for qp in args.qps:
        for name in (None, *covariances):
            options = {} if name is None else dict(covariances=covariances[name])
            stream = Encoder(qp=qp, rdoq_lambda=0.1, **options).encode(tensors).stream
            decoded = nnc.decode(stream)
            lines.append(f"| {qp} | {name or '(no feedback: DQ)'} | {len(stream):,} | "
                         f"{100 * (1 - scored(decoded)):.3f} | {100 * (1 - held_out(decoded)):.3f} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_calibration_text.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
