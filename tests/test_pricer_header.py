"""nnc/_pricer.h (the init-set pricer of the compiled engine): its SSE2, portable-vector and
scalar code give the states and costs of the scalar context update of spec 9.3.3 with the
cost table of spec A.4, bin for bin (compiled with the C compiler, skipped without one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nnc import tables

HEADER = Path(__file__).resolve().parent.parent / "nnc" / "_pricer.h"
COMPILER = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")

PROGRAM = r"""
#include <stdio.h>
#include "_pricer.h"
int main(void) {
    nnc_pricer_tables t;
    nnc_pricer p;
    unsigned x = 12345u;
    int k, n, bin;
    const int sh0[9] = {%(sh0)s}, sh1[9] = {%(sh1)s}, c0[9] = {%(c)s}, f0[9] = {%(f)s};
    const unsigned est[64] = {%(est)s};
    for (k = 0; k < 9; k++) {
        t.mul_f[k] = (int16_t)(1 << (7 - sh0[k]));
        t.mul_s[k] = (int16_t)(1 << (7 - sh1[k]));
        t.init_f[k] = (int16_t)f0[k];
        t.init_s[k] = (int16_t)(c0[k] - 16 * f0[k]);
        p.cost[k] = 0;
    }
    for (k = 0; k < 64; k++) t.est[k] = est[k];
    nnc_pricer_reset(&p, &t);
    for (n = 0; n < %(bins)d; n++) {
        x = x * 1103515245u + 12345u;
        /* runs of mostly-1, mostly-0 and mixed bins, so that states reach both ends */
        bin = ((x >> 16) %% 100) < (int)((n / 500) %% 3 == 0 ? 95 : (n / 500) %% 3 == 1 ? 5 : 50);
        nnc_price_bin(&p, &t, bin);
        if (n %% 997 == 0) nnc_pricer_reset(&p, &t);
    }
    for (k = 0; k < 9; k++) printf("%%d %%d %%llu\n", p.f[k], p.s[k], (unsigned long long)p.cost[k]);
    return 0;
}
"""

BINS = 20000


def _est_table() -> list:
    """The cost table of spec A.4, [2 q + (bin is MPS)], as the pure-Python engine computes it."""
    from nnc.engine.python.arithmetic import _COST

    return [cost for pair in _COST for cost in pair]


def _reference(est) -> list:
    """The scalar update of spec 9.3.3 with the table, as the engine's ctx_update does it."""
    adapt = tables.ADAPT_STEPS
    x = 12345
    states = [[f, c - 16 * f, 0] for (_, _, c, f) in tables.INIT_SETS]
    for n in range(BINS):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        limit = 95 if (n // 500) % 3 == 0 else 5 if (n // 500) % 3 == 1 else 50
        bin = int(((x >> 16) % 100) < limit)
        for k, (sh0, sh1, _, _) in enumerate(tables.INIT_SETS):
            f, s, cost = states[k]
            c = s + 16 * f
            cost += est[2 * abs(c >> 7) + int(bin == (c >= 0))]
            if bin:
                f += adapt[16 + (f >> 3)] >> sh0
                s += adapt[16 + (s >> 7)] >> sh1
            else:
                f -= adapt[16 + ((-f) >> 3)] >> sh0
                s -= adapt[16 + ((-s) >> 7)] >> sh1
            states[k] = [f, s, cost]
        if n % 997 == 0:
            for k, (_, _, c0, f0) in enumerate(tables.INIT_SETS):
                states[k][0], states[k][1] = f0, c0 - 16 * f0
    return [f"{f} {s} {cost}" for f, s, cost in states]


@pytest.mark.skipif(COMPILER is None, reason="no C compiler to build nnc/_pricer.h's test program")
@pytest.mark.parametrize("variant", ["", "-DNNC_PRICER_GENERIC", "-DNNC_PRICER_SCALAR"])
def test_pricer_matches_the_scalar_update(tmp_path, variant):
    est = _est_table()
    source = tmp_path / "pricer_test.c"
    source.write_text(
        PROGRAM
        % dict(
            sh0=", ".join(str(s[0]) for s in tables.INIT_SETS),
            sh1=", ".join(str(s[1]) for s in tables.INIT_SETS),
            c=", ".join(str(s[2]) for s in tables.INIT_SETS),
            f=", ".join(str(s[3]) for s in tables.INIT_SETS),
            est=", ".join(f"{v}u" for v in est),
            bins=BINS,
        )
    )
    exe = tmp_path / "pricer_test"
    cmd = [COMPILER, "-O2", "-I", str(HEADER.parent), *([variant] if variant else []), str(source), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")[:9]
    assert out == _reference(est)
