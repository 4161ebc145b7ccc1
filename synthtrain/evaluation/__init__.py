"""The eval stage (``python -m stages.eval``) and the micro-judges it uses
(``python -m stages.judges``). One module per part of the suite."""
