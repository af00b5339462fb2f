"""``python -m rkrepro`` runs the CLI (used by the kill/resume tests' subprocesses)."""

from rkrepro.cli.app import main

if __name__ == "__main__":
    main()
