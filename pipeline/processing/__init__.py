"""Processing stages: pure functions over in-memory episodes (no I/O, no Ray).

align -> clean -> score -> deidentify -> (chunk: pipeline.dataset writer)
"""
