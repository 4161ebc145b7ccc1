"""Research tools outside the DVC DAG (``python -m research.<name>``): the
experiment queue, the results report, the model-collapse driver and a sample
printer. They import only the library (``synthtrain``)."""
