"""Constant tables of the DeepCABAC engine (spec clauses 9.3, 9.4, 10.2).

Pure data, shared by the Cython engine and the pure-Python reference engine.
Every table is a tuple, so that it cannot be changed by accident.

Examples
--------
The LPS sub-range for the 9-bit range R = 300 and the combined probability
state C = -1310 of init set 1 (spec 9.4):

>>> from nnc.tables import RLPS_TABLE, INIT_SETS
>>> fast_shift, slow_shift, c, f = INIT_SETS[1]
>>> RLPS_TABLE[32 * ((300 >> 5) & 7) + abs(c >> 7)]
33

Dependent quantisation moves from state 0 to state 2 after a level k with
odd parity, and stays in state 0 after an even one (spec 10.2):

>>> from nnc.tables import NEXT_DQ_STATE
>>> k = 1
>>> NEXT_DQ_STATE[0][k & 1], NEXT_DQ_STATE[0][0]
(2, 0)
"""

#: LPS sub-range, indexed by 32 * range_class + probability_class (spec 9.4).
#: range_class = (R >> 5) & 7 for the 9-bit range R; probability_class = ``|C >> 7|`` (0..31).
RLPS_TABLE = (
    # range class 0 (R 256..287)
    128, 112, 97, 84, 74, 65, 57, 50, 45, 39, 34, 30, 27, 23, 20, 18, 15, 14, 12, 11, 10, 9, 7, 7, 5, 5, 4, 4, 3, 3, 2, 2,
    # range class 1 (R 288..319)
    142, 125, 108, 93, 82, 72, 63, 56, 50, 43, 38, 33, 30, 26, 22, 20, 17, 16, 13, 12, 11, 10, 8, 8, 6, 6, 5, 5, 3, 3, 2, 2,
    # range class 2 (R 320..351)
    156, 137, 119, 103, 90, 79, 70, 61, 55, 48, 42, 37, 33, 28, 24, 22, 19, 17, 15, 13, 12, 11, 9, 9, 6, 6, 5, 5, 4, 4, 2, 2,
    # range class 3 (R 352..383)
    171, 150, 130, 112, 99, 87, 76, 67, 60, 52, 46, 40, 36, 31, 27, 24, 21, 19, 16, 15, 13, 12, 10, 10, 7, 7, 6, 6, 4, 4, 3, 3,
    # range class 4 (R 384..415)
    185, 162, 141, 121, 107, 94, 82, 73, 65, 56, 50, 43, 39, 34, 29, 26, 22, 21, 17, 16, 14, 13, 11, 11, 8, 8, 6, 6, 4, 4, 3, 3,
    # range class 5 (R 416..447)
    199, 175, 152, 131, 115, 101, 89, 78, 70, 61, 54, 47, 42, 36, 31, 28, 24, 22, 19, 17, 15, 14, 12, 12, 8, 8, 7, 7, 5, 5, 3, 3,
    # range class 6 (R 448..479)
    213, 187, 163, 140, 123, 108, 95, 84, 75, 65, 58, 50, 45, 39, 33, 30, 26, 24, 20, 18, 16, 15, 13, 13, 9, 9, 7, 7, 5, 5, 3, 3,
    # range class 7 (R 480..510)
    228, 200, 174, 150, 132, 116, 102, 90, 80, 70, 62, 54, 48, 42, 36, 32, 28, 26, 22, 20, 18, 16, 14, 14, 10, 10, 8, 8, 6, 6, 4, 4,
)

#: Adaptation step table of the two-rate probability model (spec 9.3.3), 32 entries.
ADAPT_STEPS = (
    2512, 2288, 2064, 1840, 1616, 1392, 1168, 944, 720, 560, 464, 368, 272, 208, 144, 80,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 0,
)

#: Context initialisation sets (spec 9.3.2), each (fast shift, slow shift, combined state C, fast state F).
INIT_SETS = (
    (5, 4, 0, 0),
    (5, 4, -1310, -41),
    (5, 4, 3039, 95),
    (4, 5, 0, 0),
    (6, 6, 962, 30),
    (6, 6, 3039, 95),
    (6, 6, -673, -21),
    (7, 5, 0, 0),
    (7, 5, 962, 30),
)

#: Dependent-quantisation state transitions (spec 10.2), indexed ``NEXT_DQ_STATE[state][k & 1]``.
NEXT_DQ_STATE = (
    (0, 2),
    (7, 5),
    (1, 3),
    (6, 4),
    (2, 0),
    (5, 7),
    (3, 1),
    (4, 6),
)

__all__ = ["RLPS_TABLE", "ADAPT_STEPS", "INIT_SETS", "NEXT_DQ_STATE"]

assert len(RLPS_TABLE) == 256 and len(ADAPT_STEPS) == 32
