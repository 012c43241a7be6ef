import sys

try:
    from builder import output_dir
    from builder.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

# The process ends with this build: once its output is published, a stop signal is only
# noted, so it still prints the path and exits 0 (the shutdown after --verify's torch takes
# ~0.7 s). Not in main(), which a notebook or a test may call and then want Ctrl-C back.
output_dir.hold_signals_after_publish = True
sys.exit(main())
