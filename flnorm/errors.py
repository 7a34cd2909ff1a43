"""Exceptions raised for bad user input."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and the valid choices."""


def unknown_choice(what: str, value: object, valid: "list[str] | tuple[str, ...]") -> ConfigError:
    """Build the error for an unknown name, listing the valid ones."""
    return ConfigError(f"unknown {what} {value!r}; valid choices: {', '.join(valid)}")
