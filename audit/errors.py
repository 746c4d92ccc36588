"""The error every user mistake becomes: one line, meant for the user, naming the problem and the fix."""


class SuiteError(ValueError):
    """A mistake in a suite file or in what it names; the message is one line meant for the user."""
