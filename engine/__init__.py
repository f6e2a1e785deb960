"""miStudio's engine: plain Python + torch, no Django.

Loading a model, extracting one layer's per-token activations, training a sparse autoencoder on
them and exporting it. Every function takes plain arguments and callbacks (`on_progress`,
`should_stop`) and returns plain results, so the same code runs in a worker, a management command,
a benchmark or a notebook. Submodules are imported on demand: importing `engine` is free.
"""
