"""``python -m sandbox_runner``: run one worker on the pipes it was given."""

from sandbox_runner.serve import main

main()
