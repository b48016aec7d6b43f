"""Pure PyTorch numerics (Hessian, landscapes, signals, gradient statistics): no web, queue, DB or spec."""
