import sys

try:
    from builder.cli import program
except KeyboardInterrupt:  # Ctrl-C while Python was still importing
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

sys.exit(program())
