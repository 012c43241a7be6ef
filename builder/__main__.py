import sys

try:
    from builder.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

sys.exit(main())
