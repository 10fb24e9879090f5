# cython: language_level=3
"""Guard read-only file maps against their file being cut while they are read (see _mapguard.h)."""

cdef extern from "_mapguard.h":
    int nnc_guard_add(const void *start, size_t length)
    void nnc_guard_remove(int slot)
    int nnc_guard_faulted(int slot)
    int nnc_guard_supported()


def supported():
    """Whether this platform has guarded maps (not Windows)."""
    return bool(nnc_guard_supported())


def add(mapped):
    """Guard the memory of ``mapped`` (a non-empty read-only mmap); the slot, or -1 if none is free."""
    cdef const unsigned char[::1] view = mapped
    return nnc_guard_add(&view[0], view.shape[0])


def add_range(size_t address, size_t length):
    """Guard ``length`` bytes at ``address``, inside one read-only file map another library made (torch's); the
    slot, or -1 if none is free. The caller keeps the map alive until it removes the slot."""
    if length == 0:
        return -1
    return nnc_guard_add(<const void *>address, length)


def remove(int slot):
    """Stop guarding a slot (before its map is closed)."""
    nnc_guard_remove(slot)


def faulted(int slot):
    """Whether a read inside the slot's map found the file cut (it read zeros there)."""
    return bool(nnc_guard_faulted(slot))
