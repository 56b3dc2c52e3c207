"""Triton ops: kernels, launchers and autograd Functions, one file per op.

Each file reads top to bottom: @triton.jit kernels, plain launchers (`<op>_fwd` / `<op>_bwd`), the
`Lite<Op>Function`, and the public entry point that checks its inputs and chooses Triton or the reference
(`litekernels.utils.use_triton`).
"""
