"""The encoder's parts (informative, spec Annex A); :mod:`nnc.encoder` is the public front.

* :mod:`nnc.encoding.settings` -- :class:`~nnc.encoding.settings.EncoderSettings`, every option checked once;
* :mod:`nnc.encoding.quantiser` -- one tensor to a :class:`~nnc.encoding.quantiser.CodedTensor`;
* :mod:`nnc.encoding.writer` -- coded tensors to NNC units, and the incremental links.
"""
