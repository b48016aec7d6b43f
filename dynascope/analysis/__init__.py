"""Pure PyTorch numerics (Hessian, landscapes, signals, gradient statistics): no web, queue, DB or spec.

Imports only torch, numpy and scipy, so a researcher can use it alone.
"""
