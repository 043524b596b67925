def add(a: float, b: float) -> float:
    """Add two numbers and return their sum."""
    total = a + b
    return int(total) if total.is_integer() else total
