"""Synthetic data from a teacher model: the ``kind: generate`` sources (``generate``)
with their methods (Self-Instruct, Evol-Instruct, Magpie) and DPO preference pairs."""
