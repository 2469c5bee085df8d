"""The one exception type for user mistakes.

Anything raised as ``GlmscoreError`` is a problem with the user's input (a bad file, an unknown
model, a bad flag). Its message is one clear sentence; the CLI prints it and exits non-zero without a
traceback. Every other exception is a bug and keeps its traceback.
"""


class GlmscoreError(Exception):
    """A user error with a one-sentence explanation."""
