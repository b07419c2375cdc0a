"""Results as the commands print them: one indented `name  value` line per entry."""


def print_values(values: dict, float_format: str, indent: str = "  ") -> None:
    """One indented `name  value` line per entry (a nested dict indented under its name); floats in
    `float_format`."""
    for key, value in values.items():
        if isinstance(value, dict):
            print(f"{indent}{key}")
            print_values(value, float_format, indent + "  ")
        else:
            print(f"{indent}{key:<28} {float_format.format(value) if isinstance(value, float) else value}")
