import sys

try:
    from builder import output_dir  # noqa: F401 (program() imports it; a Ctrl-C here must be caught)
    from builder.cli import program
except KeyboardInterrupt:  # Ctrl-C while Python was still importing
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

sys.exit(program())
