"""Draw the concept figures of the documentation as plain SVG (no plotting library needed).

    python docs/figures/make_figures.py [OUT_DIR]     # default: docs/_generated/figures

The documentation build (docs/_ext/nncdocs.py) runs :func:`write_all` every time, so the
figures follow the code and are not kept in git; a file is rewritten only when its
content changes.  The unit-stream figure is drawn from a stream that nnc encodes from the
bundled digits MLP; the others illustrate spec clauses 9, 10.1 and 10.2.
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "_generated" / "figures"

FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
CTX = "#cfe2f3"      # context-coded bin
BYPASS = "#e6e6e6"   # bypass bin
STROKE = "#333333"
ACCENT = "#c0392b"


class Svg:
    """A minimal SVG writer: rectangles, lines, circles and text."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.items: list[str] = []

    def rect(self, x, y, w, h, fill="white", stroke=STROKE, dash=False, rx=2):
        d = " stroke-dasharray='4 3'" if dash else ""
        self.items.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' rx='{rx}' "
                          f"fill='{fill}' stroke='{stroke}' stroke-width='1'{d}/>")

    def line(self, x1, y1, x2, y2, stroke=STROKE, width=1.0, dash=False, arrow=False):
        d = " stroke-dasharray='5 3'" if dash else ""
        a = " marker-end='url(#arrow)'" if arrow else ""
        self.items.append(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
                          f"stroke='{stroke}' stroke-width='{width}'{d}{a}/>")

    def circle(self, x, y, r, fill="white", stroke=STROKE, width=1.0):
        self.items.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r}' fill='{fill}' stroke='{stroke}' "
                          f"stroke-width='{width}'/>")

    def text(self, x, y, s, size=12, anchor="middle", weight="normal", fill="#000000", italic=False):
        style = " font-style='italic'" if italic else ""
        self.items.append(f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
                          f"font-weight='{weight}' fill='{fill}'{style} {FONT}>{escape(str(s))}</text>")

    def render(self) -> str:
        head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{self.width}' height='{self.height}' "
                f"viewBox='0 0 {self.width} {self.height}'>\n"
                "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
                "markerHeight='7' orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' "
                f"fill='{STROKE}'/></marker></defs>\n"
                f"<rect width='{self.width}' height='{self.height}' fill='white'/>\n")
        return head + "\n".join(self.items) + "\n</svg>\n"


# -- binarisation (spec 10.1) ------------------------------------------------------------


def binarise(k: int, n_gtx: int) -> list[tuple[str, int, bool]]:
    """The bins of coded value k as (name, bin, context-coded?), edition 2, no codebook bound."""
    bins = [("sig", int(k != 0), True)]
    if k == 0:
        return bins
    bins.append(("sign", int(k < 0), True))
    a = abs(k)
    for j in range(n_gtx):
        flag = int(a > j + 1)
        bins.append((f"gt{j + 1}", flag, True))
        if not flag:
            return bins
    r = a - (n_gtx + 1)
    m = 0
    while r >= (1 << (m + 1)) - 1:        # prefix: m ones while r >= 2^(m+1) - 1
        bins.append(("pre", 1, True))
        m += 1
    bins.append(("pre", 0, True))
    s = r - ((1 << m) - 1)
    for i in reversed(range(m)):
        bins.append(("suf", (s >> i) & 1, False))
    return bins


def unbinarise(bins: list[tuple[str, int, bool]], n_gtx: int) -> int:
    """Inverse of :func:`binarise` (used by the docs test to check the figure's bins)."""
    it = iter(b for _, b, _ in bins)
    if next(it) == 0:
        return 0
    neg = next(it) == 1
    a = 1
    j = 0
    while j < n_gtx:
        if next(it) == 0:
            return -a if neg else a
        a += 1
        j += 1
    m = 0
    while next(it) == 1:
        a += 1 << m
        m += 1
    s = 0
    for _ in range(m):
        s = 2 * s + next(it)
    a += s
    return -a if neg else a


def fig_binarisation() -> str:
    n_gtx = 3
    examples = [0, 2, -3, -9, 14]
    box, gap = 34, 4
    svg = Svg(700, 60 + 58 * len(examples) + 40)
    svg.text(20, 26, f"Bins of a coded value k (spec 10.1), with N = {n_gtx} greater-than flags "
                     "(nnc's default: N = 11)", size=13, anchor="start", weight="bold")
    y = 50
    for k in examples:
        bins = binarise(k, n_gtx)
        svg.text(70, y + 22, f"k = {k}", size=13, anchor="end")
        x = 90
        for name, b, ctx in bins:
            svg.rect(x, y, box, box - 6, fill=CTX if ctx else BYPASS)
            svg.text(x + box / 2, y + 19, b, size=14, weight="bold")
            svg.text(x + box / 2, y + box + 8, name, size=9, fill="#555555")
            x += box + gap
        svg.text(x + 10, y + 19, f"{len(bins)} bin{'s' if len(bins) > 1 else ''}", size=11, anchor="start", fill="#555555")
        y += 58
    ly = y + 10
    svg.rect(90, ly, 16, 12, fill=CTX)
    svg.text(112, ly + 10, "context-coded bin (adaptive probability)", size=11, anchor="start")
    svg.rect(380, ly, 16, 12, fill=BYPASS)
    svg.text(402, ly + 10, "bypass bin (probability 1/2)", size=11, anchor="start")
    return svg.render()


# -- dependent quantisation (spec 10.2) ---------------------------------------------------

STT = [(0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6)]


def dq_levels(ks: list[int]) -> tuple[list[int], list[int]]:
    """States visited and reconstruction integers n for coded values ks, from state 0."""
    s, states, ns = 0, [0], []
    for k in ks:
        ns.append(0 if k == 0 else 2 * k - (1 if k > 0 else -1) * (s & 1))
        s = STT[s][k & 1]
        states.append(s)
    return states, ns


def fig_dq() -> str:
    ks = [1, -2, 0, 3]
    states, ns = dq_levels(ks)
    svg = Svg(700, 490)
    svg.text(20, 26, "Dependent quantisation (spec 10.2): two quantisers and an 8-state machine",
             size=13, anchor="start", weight="bold")
    # the two quantisers on a number line, in units of the step size
    x0, unit, y = 410, 30, 70
    for row, (name, pts, colour) in enumerate((("Q0 (even states)", [v for v in range(-8, 9, 2)], "#2e86c1"),
                                               ("Q1 (odd states)", [0] + [v for v in range(-7, 8, 2)], "#28b463"))):
        yy = y + 40 * row
        svg.line(x0 - 8.5 * unit, yy, x0 + 8.5 * unit, yy, stroke="#999999")
        svg.text(22, yy + 4, name, size=11, anchor="start")
        for v in pts:
            svg.circle(x0 + v * unit, yy, 5, fill=colour, stroke=colour)
    for v in range(-8, 9):
        svg.text(x0 + v * unit, y + 62, f"{v}Δ".replace("-", "−") if v else "0", size=9, fill="#555555")
    # the trellis: every transition, the example path on top
    top, left, dx, dy = 190, 150, 120, 30
    svg.text(20, top - 20, "States along the scan; solid: k even, dashed: k odd. "
                           "Example from spec 10.2: k = 1, −2, 0, 3", size=11, anchor="start")
    for i in range(len(ks)):
        for s in range(8):
            for parity in (0, 1):
                t = STT[s][parity]
                svg.line(left + i * dx, top + s * dy, left + (i + 1) * dx, top + t * dy,
                         stroke="#cccccc", dash=bool(parity))
    for i in range(len(ks)):
        a, b = states[i], states[i + 1]
        svg.line(left + i * dx, top + a * dy, left + (i + 1) * dx, top + b * dy, stroke=ACCENT, width=2.5,
                 dash=bool(ks[i] & 1))
        svg.text(left + (i + 0.5) * dx, top + 8 * dy + 6, f"k = {ks[i]}, n = {ns[i]}".replace("-", "−"), size=11, fill=ACCENT)
    for i in range(len(ks) + 1):
        for s in range(8):
            on = states[i] == s
            svg.circle(left + i * dx, top + s * dy, 9, fill="#fdebd0" if on else "white",
                       stroke=ACCENT if on else STROKE, width=2 if on else 1)
            svg.text(left + i * dx, top + s * dy + 4, s, size=10)
    svg.text(left - 40, top + 3.5 * dy + 4, "state s", size=11, anchor="end")
    svg.text(350, top + 8 * dy + 30, "n = 2k − sgn(k)·(s & 1);  next state = STT[s][k & 1];  "
                                     "value = n·Δ", size=11)
    return svg.render()


# -- arithmetic coding (spec 9) -----------------------------------------------------------


def fig_arithmetic() -> str:
    bins = [1, 1, 0, 1]
    p_one = 0.8
    svg = Svg(700, 410)
    svg.text(20, 26, f"Binary arithmetic coding: each bin narrows the interval (here P(bin = 1) = {p_one})",
             size=13, anchor="start", weight="bold")
    left, width, top, h, gap = 110, 560, 60, 26, 36
    lo, hi = 0.0, 1.0
    for i, b in enumerate(bins + [None]):
        y = top + i * (h + gap)
        x_lo, x_hi = left + lo * width, left + hi * width
        svg.rect(left, y, width, h, fill="#fafafa", stroke="#bbbbbb")
        if b is None:
            svg.rect(x_lo, y, max(x_hi - x_lo, 1.5), h, fill="#fdebd0", stroke=ACCENT)
            svg.text(left - 10, y + 17, "result", size=11, anchor="end", fill=ACCENT)
            bits = -math.log2(hi - lo)
            svg.text(left + width / 2, y + h + 22,
                     f"final width {hi - lo:.4f} = about {bits:.1f} bits for {len(bins)} bins; a bin that matches "
                     f"the estimate costs −log2 {p_one} ≈ {-math.log2(p_one):.2f} bits", size=11)
            break
        split = lo + (hi - lo) * (1 - p_one)
        xs = left + split * width
        svg.rect(x_lo, y, xs - x_lo, h, fill=BYPASS)
        svg.rect(xs, y, x_hi - xs, h, fill=CTX)
        svg.text((x_lo + xs) / 2, y + 17, "0", size=11)
        svg.text((xs + x_hi) / 2, y + 17, "1", size=11)
        svg.text(left - 10, y + 17, f"bin {i + 1} = {b}", size=11, anchor="end", fill=ACCENT)
        new_lo, new_hi = (split, hi) if b else (lo, split)
        # guide lines to the next row
        svg.line(left + new_lo * width, y + h, left + new_lo * width, y + h + gap, stroke=ACCENT, dash=True)
        svg.line(left + new_hi * width, y + h, left + new_hi * width, y + h + gap, stroke=ACCENT, dash=True)
        lo, hi = new_lo, new_hi
    svg.text(20, 392, "nnc's engine (spec 9): a 9-bit integer range, a table instead of the multiplication, "
                      "a two-rate adaptive estimate per context.",
             size=11, anchor="start", fill="#555555")
    return svg.render()


# -- unit stream (spec 3, 7) -----------------------------------------------------------------


def stream_layout():
    """(type, offset, size, size-field bytes, header bytes, payload bytes, tensor) of a digits MLP stream."""
    import numpy as np

    import nnc
    from nnc.demo import DATA
    from nnc.formats import read_model

    params = {k: np.asarray(v, np.float32) for k, v in read_model(DATA / "mlp.safetensors")[0].items()}
    stream = nnc.encode(params, qp=-20, dq=True)
    dec = nnc.Decoder(stream)
    names = {t.unit_index: t.name for t in dec.tensors()}
    rows, ndu = [], 0
    for u in dec.units:
        size_field = 2 if u.size <= 32767 else 4
        tensor = ""
        if u.type_name == "NNR_NDU":
            tensor = names.get(ndu, "")
            ndu += 1
            header = u.payload_offset - u.offset - size_field
            payload = u.end - u.payload_offset
        else:
            header, payload = u.size - size_field, 0
        rows.append((u.type_name, u.offset, u.size, size_field, header, payload, tensor))
    return rows, len(stream)


def fig_units() -> str:
    rows, total = stream_layout()
    svg = Svg(760, 300)
    svg.text(20, 26, f"An NNC stream: the digits MLP at qp −20 with DQ ({total} bytes, from nnc.encode)",
             size=13, anchor="start", weight="bold")
    left, width, y, h = 20, 720, 50, 46
    # unit boxes: width grows with the square root of the size so that small units stay visible
    weights = [math.sqrt(r[2]) + 6 for r in rows]
    scale = width / sum(weights)
    x = left
    colours = {"NNR_STR": "#f9e79f", "NNR_MPS": "#f5cba7", "NNR_TPL": "#d5dbdb", "NNR_NDU": CTX}
    centres = []
    for r, wgt in zip(rows, weights):
        w = wgt * scale
        svg.rect(x, y, w, h, fill=colours.get(r[0], "white"))
        svg.text(x + w / 2, y + 19, r[0].replace("NNR_", ""), size=10, weight="bold")
        svg.text(x + w / 2, y + 34, f"{r[2]} B", size=9)
        if r[6]:
            svg.text(x + w / 2, y + h + 14, r[6], size=9, fill="#555555")
        centres.append((x, w))
        x += w
    # zoom into the first NDU
    i = next(i for i, r in enumerate(rows) if r[0] == "NNR_NDU")
    name, off, size, sf, hdr, pay, tensor = rows[i]
    zy = 150
    zx, zw = centres[i]
    svg.line(zx, y + h + 20, left, zy, stroke="#999999", dash=True)
    svg.line(zx + zw, y + h + 20, left + width, zy, stroke="#999999", dash=True)
    parts = [("nnr_unit_size", sf, "#fcf3cf"), ("unit header + NDU header", hdr, "#fadbd8"),
             ("CABAC payload (one arithmetic codeword)", pay, CTX)]
    pw = [140, 230, width - 370]
    x = left
    for (label, nbytes, colour), w in zip(parts, pw):
        svg.rect(x, zy, w, h, fill=colour)
        svg.text(x + w / 2, zy + 19, label, size=10, weight="bold")
        svg.text(x + w / 2, zy + 34, f"{nbytes} B", size=9)
        x += w
    svg.text(left, zy + h + 20, f"NDU of {tensor}: type 5, payload type, name, dq_flag, dimensions, "
                                "scan order, N ... (spec 7.1)", size=11, anchor="start")
    svg.text(left, zy + h + 38, "Payload per tensor: qp offset, context-initialisation signalling, "
                                "then the bins of every element in scan order (spec 8.1)", size=11,
             anchor="start")
    svg.text(left, zy + h + 56, "Units follow one another with no stream header and no padding; each starts "
                                "with its own size (spec 3.1).", size=11, anchor="start")
    svg.text(left, zy + h + 78, "Box widths of the top row grow with the square root of the unit size.",
             size=10, anchor="start", fill="#555555", italic=True)
    return svg.render()


FIGURES = {
    "binarisation.svg": fig_binarisation,
    "dq_trellis.svg": fig_dq,
    "arithmetic_coding.svg": fig_arithmetic,
    "unit_stream.svg": fig_units,
}


def write_all(out_dir: Path = OUT) -> list[str]:
    """Write every figure to ``out_dir``; return the names of the files that changed."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    changed = []
    for name, make in FIGURES.items():
        path = Path(out_dir) / name
        text = make()
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


if __name__ == "__main__":
    import sys

    print("changed:", ", ".join(write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)) or "nothing")
