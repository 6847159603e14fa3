"""Code that runs on the instances: the data-prep engine (fetch, organise, pack, verify, inspect)."""
