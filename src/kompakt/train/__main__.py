"""`python -m kompakt.train ...` and `torchrun -m kompakt.train ...`: `kompakt train`."""

from kompakt.cli import train_command

if __name__ == "__main__":
    train_command(prog_name="kompakt.train")
