"""Run-time checks of what components hand each other, naming the component that broke the
contract (and its plugin) instead of letting a tensor error surface deep inside PyTorch.

The resolve-time contract (contract.py) checks declared kinds before any data is read; these
check the values themselves, one idea a module: the first training batch through features →
backbone → head (first_batch), what input_spec() saves in checkpoints (input_spec), a frontend's
and the features' determinism (determinism), the sampler's batches (batches), a first training
step that fails (first_step), and, when a loss or the embeddings turn non-finite, which stage
made the first NaN (nonfinite). The objective's own checks are in objective; how messages name
a component and a value is in naming.
"""
