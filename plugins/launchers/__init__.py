"""Built-in sweep launchers: ``local`` (a pool of processes on this machine, ``--jobs N``) and ``slurm``
(one SLURM job per variant through submitit, ``pip install 'igdm-kit[slurm]'``)."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_launchers(register):
    from .local import Local
    from .slurm import Slurm

    register("local", Local)
    register("slurm", Slurm)
