"""``python -m glmscore``: the ``glmscore`` command (``ray job submit ... -- python -m glmscore score ...``)."""

from glmscore.pipelines.supervise import command

if __name__ == "__main__":
    command()
