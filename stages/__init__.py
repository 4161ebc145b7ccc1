"""One thin module per DVC stage (``python -m stages.<name>``): each parses its
arguments, reads params.yaml and calls the library (``synthtrain``). A stage
never imports another stage."""
