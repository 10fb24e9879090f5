"""tools/conformance_coverage.py's own logic: the blocks of marked checks, gcov's counts and their mapping
from C lines back to .pyx lines (--cython-gcov)."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("conformance_coverage", REPO / "tools" / "conformance_coverage.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def test_marked_blocks_take_the_statement_its_block_and_decorators():
    lines = [
        "def f(x):",  # 1
        "    if x < 0:  # api-check",  # 2
        "        raise ValueError(",  # 3
        "            'negative')",  # 4
        "    y = x",  # 5
        "    raise TypeError(  # api-check",  # 6
        "        'no')",  # 7
        "@property",  # 8
        "def bit_position(self):",  # 9
        "    return 1",  # 10
        "z = 2",  # 11
    ]
    blocks = tool.marked_blocks(lines, [tool.API_CHECK] + tool.ENGINE_API_ONLY)
    assert sorted(blocks) == [2, 3, 4, 6, 7, 8, 9, 10]


def test_gcov_counts():
    text = "\n".join([
        "        -:    0:Source:x.c",
        "        -:    1:/* comment */",
        "    #####:    2:  a = 1;",
        "       12:    3:  b = 2;",
        "       3*:    4:  if (c) d();",
        "    =====:    5:  e();",
    ])
    assert tool.gcov_counts(text) == {1: None, 2: 0, 3: 12, 4: 3, 5: 0}


C_FILE = """\
  /* "nnc/_engine.pyx":10
 * cdef int f(int x) noexcept nogil:
*/
static int f(int x) {
  int r;
  /* "nnc/_engine.pyx":11
 *     if x:             # <<<<<<<<<<<<<<
*/
  __Pyx_TraceLine(11,0,1,__PYX_ERR(0, 11, L))
  r = (x != 0);
  if (r) {
    /* "nnc/_engine.pyx":12
 *         return 1             # <<<<<<<<<<<<<<
*/
    __Pyx_TraceLine(12,0,1,__PYX_ERR(0, 12, L))
    return 1;
  }
  /* "nnc/_engine.pyx":13
 *     while True:             # <<<<<<<<<<<<<<
*/
  __Pyx_TraceLine(13,0,1,__PYX_ERR(0, 13, L))
  while (1) {
    /* "nnc/_engine.pyx":14
 *         x += 1             # <<<<<<<<<<<<<<
*/
    __Pyx_TraceLine(14,0,1,__PYX_ERR(0, 14, L))
    x += 1;
  }
}
  /* "nnc/_engine.pyx":10
 * cdef int f(int x) noexcept nogil:
*/
  __Pyx_TraceLine(10,0,0,__PYX_ERR(0, 10, L))
  /* "other.pyx":3
*/
  __Pyx_TraceLine(3,0,0,__PYX_ERR(0, 3, L))
  g = 1;
"""


@pytest.mark.parametrize("entered, returned", [(5, 2), (0, 0), (4, 4)])
def test_pyx_line_runs_follow_the_first_counted_c_line(entered, returned):
    lines = C_FILE.splitlines()
    number = {text.strip(): i + 1 for i, text in enumerate(lines)}
    counts = {i + 1: None for i in range(len(lines))}
    counts[number["static int f(int x) {"]] = entered
    counts[number["r = (x != 0);"]] = entered
    counts[number["return 1;"]] = returned
    counts[number["x += 1;"]] = entered - returned
    counts[number["g = 1;"]] = 1
    runs = tool.pyx_line_runs(lines, counts, "nnc/_engine.pyx")
    # line 10: its probe (module initialisation) has no code; its comment opens the function, entered or not;
    # line 13 (while True) has no code of its own: the loop body after it
    assert runs == {10: entered > 0, 11: entered > 0, 12: returned > 0, 13: entered > returned,
                    14: entered > returned}
