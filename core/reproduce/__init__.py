"""One command per paper table (`python -m core reproduce TABLE`): the registry and one module per table.

`registry.TABLES` lists them; each module's `run(options, log)` computes its table from the engine's public
functions and returns rows with the published numbers (`published`) next to ours.
"""
