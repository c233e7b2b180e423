"""The error every module raises for bad input (a file, a flag, a config key), and the root of the documented
error classes (``ConfigError``, ``DatasetError``, ``ConversionError``, ...): ``tencentpretrain.cli.run_cli`` turns
any of them into one message and exit status 1."""


class InputError(ValueError):
    """A bad input file or flag; the message names the flag, the file and what is wrong with it."""
