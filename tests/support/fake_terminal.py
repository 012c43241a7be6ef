"""A stream that says it is a terminal and keeps what is written to it, for the progress and
status lines that draw only on a terminal."""


class FakeTerminal:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return True
