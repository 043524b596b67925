import math

from .context import ToolError, describe


@describe(title="Add two numbers", read_only=True, idempotent=True, open_world=False)
def add(a: float, b: float) -> float:
    """Add two numbers and return their sum."""
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ToolError("a and b must be finite numbers")
    total = a + b
    # Past about 1.8e308 a float overflows to infinity, which JSON cannot carry (it became null).
    if not math.isfinite(total):
        raise ToolError("The sum is too large to represent: it exceeds about 1.8e308")
    return int(total) if total.is_integer() else total
