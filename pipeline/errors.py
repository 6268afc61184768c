"""The one exception type of the user's mistakes (a spec, a path, a run name, the data): the CLI
prints it as one line, no traceback. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    pass
